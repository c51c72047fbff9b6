"""Negative and unit tests for step 2 of the request path: `gateway.authn.Authenticator`.

Tokens come from `CraftingIssuer`, a local issuer that serves discovery + JWKS and signs
whatever it is asked to — including tokens no real IdP would mint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.authn import Authenticator, AuthError, jws
from gateway.config.model import OIDC, Issuer
from tests.support.craft import CraftingIssuer

pytestmark = pytest.mark.asyncio(loop_scope="module")

# -- helpers -------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(obj: dict) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def raw_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{segment(header)}.{segment(claims)}.{b64url(signature)}"


def ec_raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes, hash_alg, size: int) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hash_alg)))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def rs256(idp: CraftingIssuer, header: dict, claims: dict) -> str:
    """Sign with the issuer's RSA key without pyjwt's checks on header and claims."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    sig = idp.rsa.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def issuer_config(idp: CraftingIssuer, **overrides: Any) -> Issuer:
    fields: dict[str, Any] = {
        "issuer": idp.issuer,
        "audiences": ["vgate"],
        "username_claim": "email",
        "username_prefix": "oidc:",
        "groups_claim": "groups",
        "groups_prefix": "oidc:",
    }
    fields.update(overrides)
    return Issuer(**fields)


class Auths:
    """Builds started Authenticators and closes them after the test."""

    def __init__(self) -> None:
        self.made: list[Authenticator] = []

    async def __call__(self, *issuers: Issuer, **oidc: Any) -> Authenticator:
        auth = Authenticator(OIDC(issuers=list(issuers), **oidc))
        await auth.start()
        self.made.append(auth)
        return auth


def started(issuer: CraftingIssuer) -> CraftingIssuer:
    """`CraftingIssuer.start()` with a short poll interval, so `down()` takes ms, not 0.5 s."""
    server = issuer._server
    issuer._thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    issuer._thread.start()
    return issuer


@pytest.fixture(scope="module")
def idp() -> Iterator[CraftingIssuer]:
    """A shared issuer for tests that do not change it or count its fetches."""
    issuer = started(CraftingIssuer())
    # Every token is unique (the shared Authenticator's cache must not link two tests).
    serial = itertools.count()
    real_claims = issuer.claims

    def claims(**overrides: Any) -> dict:
        overrides.setdefault("jti", f"t{next(serial)}")
        return real_claims(**overrides)

    issuer.claims = claims  # type: ignore[method-assign]
    yield issuer
    issuer.down()


@pytest.fixture
def own_idp() -> Iterator[CraftingIssuer]:
    """A fresh issuer for tests that rotate keys, stop it, or count JWKS fetches."""
    issuer = started(CraftingIssuer())
    state = {"up": True}
    real_down = issuer.down

    def down() -> None:
        if state["up"]:
            state["up"] = False
            real_down()

    issuer.down = down  # type: ignore[method-assign]
    yield issuer
    down()


@pytest_asyncio.fixture(loop_scope="module")
async def make() -> AsyncIterator[Auths]:
    auths = Auths()
    yield auths
    for auth in auths.made:
        await auth.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def auth(idp: CraftingIssuer) -> AsyncIterator[Authenticator]:
    """The default configuration, shared: building one costs an SSL context (~25 ms)."""
    shared = Authenticator(OIDC(issuers=[issuer_config(idp)]))
    await shared.start()
    yield shared
    await shared.close()


async def refused(auth: Authenticator, token: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token)
    assert auth.cached(token) is None  # failures are never cached
    return info.value


# -- good tokens ---------------------------------------------------------------------------


async def test_start_loads_keys(auth: Authenticator) -> None:
    assert auth.ready


@pytest.mark.parametrize("kid", ["rsa1", "ec1"])
async def test_valid_rs256_and_es256(idp: CraftingIssuer, auth: Authenticator, kid: str) -> None:
    claims = idp.claims(groups=["developers", "team-a"])
    identity = await auth.authenticate(idp.sign(claims, kid=kid))
    assert identity.username == "oidc:alice@example.com"
    assert identity.uid == "u-alice"
    assert identity.groups == ("oidc:developers", "oidc:team-a")
    assert identity.issuer == idp.issuer
    assert identity.expires_at == float(claims["exp"])


async def test_several_issuers(make: Auths, idp: CraftingIssuer, own_idp: CraftingIssuer) -> None:
    auth = await make(issuer_config(idp), issuer_config(own_idp, username_prefix="other:"))
    a = await auth.authenticate(idp.sign(idp.claims()))
    b = await auth.authenticate(own_idp.sign(own_idp.claims()))
    assert (a.issuer, a.username) == (idp.issuer, "oidc:alice@example.com")
    assert (b.issuer, b.username) == (own_idp.issuer, "other:alice@example.com")


async def test_audience_list_containing_ours(idp: CraftingIssuer, auth: Authenticator) -> None:
    identity = await auth.authenticate(idp.sign(idp.claims(aud=["kubectl", "vgate"])))
    assert identity.uid == "u-alice"


async def test_groups_claim_as_single_string(idp: CraftingIssuer, auth: Authenticator) -> None:
    identity = await auth.authenticate(idp.sign(idp.claims(groups="developers")))
    assert identity.groups == ("oidc:developers",)


async def test_no_groups_claim_means_no_groups(idp: CraftingIssuer, auth: Authenticator) -> None:
    identity = await auth.authenticate(idp.sign(idp.claims(groups=None)))
    assert identity.groups == ()


# -- algorithms ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", ""])
@pytest.mark.parametrize("kid", [None, "rsa1"])
async def test_alg_none_is_refused(
    idp: CraftingIssuer, auth: Authenticator, alg: str, kid: str | None
) -> None:
    header = {"alg": alg, "typ": "JWT"} | ({"kid": kid} if kid else {})
    err = await refused(auth, raw_token(header, idp.claims()))
    assert (err.reason, err.code) == ("bad_algorithm", 401)


async def test_alg_missing_is_refused(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims())
    err = await refused(auth, segment({"kid": "rsa1"}) + token[token.index(".") :])
    assert err.reason == "bad_algorithm"


def _hs256_with_public_key(idp: CraftingIssuer, kid: str | None = "rsa1") -> str:
    header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    signing_input = f"{segment(header)}.{segment(idp.claims())}".encode()
    mac = hmac.new(idp.public_pem(), signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + b64url(mac)


@pytest.mark.parametrize("kid", [None, "rsa1"])
async def test_hs256_keyed_with_the_public_key_is_refused(
    idp: CraftingIssuer, auth: Authenticator, kid: str | None
) -> None:
    err = await refused(auth, _hs256_with_public_key(idp, kid))
    assert err.reason == "bad_algorithm"


async def test_hs256_refused_even_if_allowlist_were_bypassed(
    idp: CraftingIssuer, make: Auths
) -> None:
    # The config refuses HS*; build an Issuer past validation to check the key layer too.
    cfg = issuer_config(idp).model_copy(update={"algorithms": ["RS256", "HS256"]})
    auth = await make(cfg)
    err = await refused(auth, _hs256_with_public_key(idp))
    assert err.reason == "unknown_key"
    assert (await auth.authenticate(idp.sign(idp.claims()))).uid == "u-alice"


@pytest.mark.parametrize("alg", ["RS384", "RS512", "PS256"])
async def test_alg_outside_allowlist_is_refused(
    idp: CraftingIssuer, auth: Authenticator, alg: str
) -> None:
    err = await refused(auth, idp.sign(idp.claims(), kid="rsa1", alg=alg))
    assert err.reason == "bad_algorithm"


async def test_alg_allowlist_is_per_issuer(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, algorithms=["ES256"]))
    err = await refused(auth, idp.sign(idp.claims(), kid="rsa1"))
    assert err.reason == "bad_algorithm"
    assert (await auth.authenticate(idp.sign(idp.claims(), kid="ec1"))).uid == "u-alice"
    auth384 = await make(issuer_config(idp, algorithms=["RS384"]))
    assert (await auth384.authenticate(idp.sign(idp.claims(), alg="RS384"))).uid == "u-alice"


async def test_ec_key_with_mismatched_curve_is_refused(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, algorithms=["ES256", "ES384", "RS256"]))
    header = {"alg": "ES384", "kid": "ec1", "typ": "JWT"}  # ec1 is a P-256 key
    signing_input = f"{segment(header)}.{segment(idp.claims())}"
    sig = ec_raw_signature(idp.ec, signing_input.encode(), hashes.SHA384(), 32)
    err = await refused(auth, signing_input + "." + b64url(sig))
    assert err.reason == "unknown_key"


async def test_key_type_must_fit_alg(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, algorithms=["ES256", "RS256"]))
    # RS256 header naming the EC key, and ES256 header naming the RSA key
    rs_on_ec = idp.sign(idp.claims(), kid="rsa1", headers={"kid": "ec1"})
    es_on_rsa = idp.sign(idp.claims(), kid="ec1", headers={"kid": "rsa1"})
    assert (await refused(auth, rs_on_ec)).reason == "unknown_key"
    assert (await refused(auth, es_on_rsa)).reason == "unknown_key"


async def test_p384_key_cannot_verify_es256(own_idp: CraftingIssuer, make: Auths) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    own_idp.keys["ec384"] = ("ES384", p384)
    auth = await make(issuer_config(own_idp, algorithms=["ES256", "ES384"]))
    assert (await auth.authenticate(own_idp.sign(own_idp.claims(), kid="ec384"))).uid
    header = {"alg": "ES256", "kid": "ec384", "typ": "JWT"}
    signing_input = f"{segment(header)}.{segment(own_idp.claims(sub='u-x'))}"
    sig = ec_raw_signature(p384, signing_input.encode(), hashes.SHA256(), 48)
    err = await refused(auth, signing_input + "." + b64url(sig))
    assert err.reason == "unknown_key"


async def test_embedded_jwk_and_jku_are_ignored(idp: CraftingIssuer, auth: Authenticator) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    for extra in ({"jwk": jwk}, {"jku": "http://127.0.0.1:1/jwks"}, {"x5u": "http://x/"}):
        token = jwt.encode(
            idp.claims(), attacker, algorithm="RS256", headers={"kid": "rsa1", **extra}
        )
        assert (await refused(auth, token)).reason == "bad_signature"


async def test_signature_tampering_is_refused(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims())
    head, _, sig = token.rpartition(".")
    forged_claims = segment(idp.claims(groups=["tenant1-admins"]))
    forged = f"{head.split('.')[0]}.{forged_claims}.{sig}"
    assert (await refused(auth, forged)).reason == "bad_signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.@@@.###",
        f"{segment({'alg': 'RS256'})}.bm90anNvbg.x",
        f"{b64url(b'[1,2]')}.{segment({'iss': 'x'})}.x",
    ],
)
async def test_malformed_tokens(auth: Authenticator, token: str) -> None:
    assert (await refused(auth, token)).reason == "malformed"


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


async def test_segments_are_strict_base64url(idp: CraftingIssuer, auth: Authenticator) -> None:
    """The rules PyJWT's `decode` applies to each segment (gateway.authn.jws checks them
    without it): alphabet, padding only up to a multiple of four, one spelling per value."""
    token = idp.sign(idp.claims())
    head, _, sig = token.rpartition(".")
    assert len(sig) % 4 == 2  # 256 bytes: the last character carries 4 unused bits
    # the same bytes spelled with a non-zero unused bit: a second spelling of one signature
    other = sig[:-1] + _ALPHABET[_ALPHABET.index(sig[-1]) ^ 1]
    for bad in (
        f"{head}.{other}",
        f"{head}.{sig[:40]}!{sig[41:]}",
        f"{head}.{sig}=",
        f"{head}.{sig}===",
        f"{head}.{sig}AAA",
        f"{head}.{sig}\n",
    ):
        assert (await refused(auth, bad)).reason == "malformed", bad[-8:]
    # padding to a multiple of four is accepted (as PyJWT does: some issuers send it)
    assert (await auth.authenticate(f"{head}.{sig}==")).uid == "u-alice"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "RS256", "kid": "rsa1", "crit": ["exp"]},
        {"alg": "RS256", "kid": "rsa1", "crit": ["b64"], "b64": False},
        {"alg": "RS256", "kid": "rsa1", "b64": False},
    ],
)
async def test_jws_extensions_are_refused(
    idp: CraftingIssuer, auth: Authenticator, header: dict
) -> None:
    """No critical extension is supported, nor an unencoded payload: such a token is
    malformed even with a valid signature."""
    assert (await refused(auth, rs256(idp, header, idp.claims()))).reason == "malformed"


async def test_kid_must_be_a_string(idp: CraftingIssuer, auth: Authenticator) -> None:
    for kid in (1, ["rsa1"], {"k": "rsa1"}):
        token = rs256(idp, {"alg": "RS256", "kid": kid}, idp.claims())
        assert (await refused(auth, token)).reason == "malformed", kid
    # the hand-signed path itself works
    assert (
        await auth.authenticate(rs256(idp, {"alg": "RS256", "kid": "rsa1"}, idp.claims()))
    ).uid == "u-alice"


# -- issuer, audience, time ----------------------------------------------------------------


@pytest.mark.parametrize("aud", ["other", ["other", "kubectl"], "vgate2", "VGATE", ["vgat"]])
async def test_wrong_audience(idp: CraftingIssuer, auth: Authenticator, aud: Any) -> None:
    assert (await refused(auth, idp.sign(idp.claims(aud=aud)))).reason == "bad_audience"


@pytest.mark.parametrize("aud", [None, [], ""])
async def test_missing_audience(idp: CraftingIssuer, auth: Authenticator, aud: Any) -> None:
    claims = idp.claims()
    if aud is None:
        del claims["aud"]
    else:
        claims["aud"] = aud
    assert (await refused(auth, idp.sign(claims))).reason in ("invalid", "bad_audience")


async def test_unknown_issuer(idp: CraftingIssuer, auth: Authenticator) -> None:
    for iss in [
        "https://evil.example.com",
        idp.issuer + "/",
        idp.issuer.upper(),
        idp.issuer[:-1],
        idp.issuer + "0",
        " " + idp.issuer,
        "",
    ]:
        err = await refused(auth, idp.sign(idp.claims(iss=iss)))
        assert err.reason == "unknown_issuer", iss
    header = {"alg": "RS256", "kid": "rsa1"}
    for iss in (42, [idp.issuer], {"iss": idp.issuer}, None):
        claims = idp.claims()
        claims["iss"] = iss
        err = await refused(auth, rs256(idp, header, claims))
        assert err.reason == "unknown_issuer", iss
    claims = idp.claims()
    del claims["iss"]
    assert (await refused(auth, rs256(idp, header, claims))).reason == "unknown_issuer"


async def test_wrong_issuer_with_another_issuers_key(
    make: Auths, idp: CraftingIssuer, own_idp: CraftingIssuer
) -> None:
    # Both issuers are trusted; a token from one claiming to be the other must not pass.
    auth = await make(issuer_config(idp), issuer_config(own_idp))
    forged = idp.sign(own_idp.claims())  # signed by idp's rsa1, iss = own_idp
    assert (await refused(auth, forged)).reason == "bad_signature"
    forged_ec = idp.sign(own_idp.claims(), kid="ec1")
    assert (await refused(auth, forged_ec)).reason == "bad_signature"


async def test_expired(idp: CraftingIssuer, auth: Authenticator) -> None:
    now = int(time.time())
    token = idp.sign(idp.claims(iat=now - 600, exp=now - 31))  # default leeway is 30 s
    assert (await refused(auth, token)).reason == "expired"


async def test_expired_within_leeway_is_accepted(idp: CraftingIssuer, auth: Authenticator) -> None:
    now = int(time.time())
    identity = await auth.authenticate(idp.sign(idp.claims(iat=now - 600, exp=now - 20)))
    assert identity.uid == "u-alice"


async def test_leeway_is_configurable(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, leeway_seconds=0))
    now = int(time.time())
    assert (await refused(auth, idp.sign(idp.claims(exp=now - 2)))).reason == "expired"
    assert (await refused(auth, idp.sign(idp.claims(nbf=now + 5)))).reason == "not_yet_valid"


async def test_nbf_in_the_future(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims(nbf=int(time.time()) + 120))
    assert (await refused(auth, token)).reason == "not_yet_valid"


async def test_nbf_within_leeway_is_accepted(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims(nbf=int(time.time()) + 10))
    assert (await auth.authenticate(token)).uid == "u-alice"


async def test_iat_in_the_future(idp: CraftingIssuer, auth: Authenticator) -> None:
    now = int(time.time())
    token = idp.sign(idp.claims(iat=now + 120, exp=now + 600))
    assert (await refused(auth, token)).reason == "not_yet_valid"


async def test_max_token_age(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, max_token_age_seconds=60, leeway_seconds=0))
    now = int(time.time())
    assert (await refused(auth, idp.sign(idp.claims(iat=now - 61)))).reason == "too_old"
    assert (await auth.authenticate(idp.sign(idp.claims(iat=now - 50)))).uid == "u-alice"


@pytest.mark.parametrize("claim", ["sub", "exp", "iat"])
async def test_missing_required_registered_claim(
    idp: CraftingIssuer, auth: Authenticator, claim: str
) -> None:
    assert (await refused(auth, idp.sign(idp.claims(**{claim: None})))).reason == "invalid"


@pytest.mark.parametrize("value", ["", 42, ["u-alice"], "x" * 1025])
async def test_bad_sub(idp: CraftingIssuer, auth: Authenticator, value: Any) -> None:
    assert (await refused(auth, idp.sign(idp.claims(sub=value)))).reason == "invalid"


@pytest.mark.parametrize("value", ["soon", True, [1], {"t": 1}])
async def test_bad_iat_types(idp: CraftingIssuer, auth: Authenticator, value: Any) -> None:
    token = idp.sign(idp.claims(iat=value))
    assert (await refused(auth, token)).reason == "invalid"


@pytest.mark.parametrize("value", ["soon", [1], {"t": 1}])
async def test_bad_exp_types(idp: CraftingIssuer, auth: Authenticator, value: Any) -> None:
    token = idp.sign(idp.claims(exp=value))
    assert (await refused(auth, token)).reason == "invalid"


# -- claims → identity ---------------------------------------------------------------------


async def test_required_claims(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, required_claims={"hd": "example.com", "tier": "gold"}))
    good = idp.claims(hd="example.com", tier="gold")
    assert (await auth.authenticate(idp.sign(good))).uid == "u-alice"
    for bad in ({"hd": "evil.com"}, {"hd": None}, {"tier": "Gold"}, {"hd": ["example.com"]}):
        token = idp.sign(
            {**good, **bad}
            if None not in bad.values()
            else {k: v for k, v in good.items() if k not in bad}
        )
        assert (await refused(auth, token)).reason == "required_claim", bad


async def test_username_claim_missing(idp: CraftingIssuer, auth: Authenticator) -> None:
    for email in (None, "", 42, ["alice@example.com"]):
        err = await refused(auth, idp.sign(idp.claims(email=email)))
        assert err.reason == "no_username", email


async def test_username_claim_is_configurable(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, username_claim="sub", username_prefix=""))
    identity = await auth.authenticate(idp.sign(idp.claims(email_verified=False)))
    assert identity.username == "u-alice"


@pytest.mark.parametrize("verified", [False, "true", 1, None])
async def test_email_not_verified(idp: CraftingIssuer, auth: Authenticator, verified: Any) -> None:
    claims = idp.claims()
    claims["email_verified"] = verified
    assert (await refused(auth, idp.sign(claims))).reason == "email_unverified"


async def test_email_verified_true_accepted(idp: CraftingIssuer, auth: Authenticator) -> None:
    identity = await auth.authenticate(idp.sign(idp.claims(email_verified=True)))
    assert identity.username == "oidc:alice@example.com"


@pytest.mark.parametrize(
    ("overrides", "claims"),
    [
        ({"username_claim": "sub", "username_prefix": ""}, {"sub": "system:admin"}),
        (
            {"username_claim": "sub", "username_prefix": ""},
            {"sub": "system:serviceaccount:kube-system:default"},
        ),
        ({"username_prefix": ""}, {"email": "system:kube-controller-manager"}),
        ({"username_prefix": "system:"}, {}),
        ({"groups_prefix": ""}, {"groups": ["developers", "system:masters"]}),
        ({"groups_prefix": ""}, {"groups": "system:nodes"}),
        ({"groups_prefix": "system:"}, {"groups": ["masters"]}),
        ({"groups_prefix": "sys"}, {"groups": ["tem:masters"]}),
    ],
)
async def test_reserved_system_identity_is_403(
    idp: CraftingIssuer, make: Auths, overrides: dict, claims: dict
) -> None:
    auth = await make(issuer_config(idp, **overrides))
    err = await refused(auth, idp.sign(idp.claims(**claims)))
    assert (err.reason, err.code) == ("reserved_identity", 403)


async def test_prefixed_system_names_are_allowed(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims(email="system:admin", groups=["system:masters", "dev"]))
    identity = await auth.authenticate(token)
    assert identity.username == "oidc:system:admin"
    assert identity.groups == ("oidc:system:masters", "oidc:dev")


async def test_names_that_passed_before_let_no_unsafe_one_through(
    idp: CraftingIssuer, make: Auths
) -> None:
    """The verifier remembers claim values that passed the name gate; a token repeating
    them and adding an unsafe one is still refused, and the unsafe one is not remembered."""
    auth = await make(issuer_config(idp, groups_prefix=""))
    first = await auth.authenticate(idp.sign(idp.claims(jti="1", groups=["dev", "ops"])))
    assert first.groups == ("dev", "ops")
    for jti, groups, reason in (
        ("2", ["dev", "system:masters"], "reserved_identity"),
        ("3", ["dev", "dev "], "malformed_name"),
        ("4", ["ops", "system:masters"], "reserved_identity"),  # refused again, not cached
    ):
        err = await refused(auth, idp.sign(idp.claims(jti=jti, groups=groups)))
        assert err.reason == reason
    err = await refused(auth, idp.sign(idp.claims(jti="5", sub=" u-alice")))
    assert err.reason == "invalid"
    again = await auth.authenticate(idp.sign(idp.claims(jti="6", groups=["ops"])))
    assert again.groups == ("ops",) and again.username == first.username


@pytest.mark.parametrize("groups", [{"a": 1}, 42, ["ok", 1], [["nested"]], True, ["a", None]])
async def test_groups_claim_not_a_string_list(
    idp: CraftingIssuer, auth: Authenticator, groups: Any
) -> None:
    assert (await refused(auth, idp.sign(idp.claims(groups=groups)))).reason == "malformed"


async def test_too_many_groups(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims(groups=[f"g{i}" for i in range(513)]))
    assert (await refused(auth, token)).reason == "malformed"


@pytest.mark.parametrize(
    "claims",
    [
        {"email": "alice@example.com\r\nImpersonate-Group: system:masters"},
        {"email": "alice\n@example.com"},
        {"email": "alice\x00@example.com"},
        {"email": "alice\x7f@example.com"},
        {"email": "alice\u2028@example.com"},
        {"groups": ["dev\r\nImpersonate-User: admin"]},
        {"groups": ["ok", "dev\tops"]},
        {"groups": ["dev\x1b[31m"]},
        {"email": "a" * 1100},
    ],
)
async def test_control_characters_in_names_are_refused(
    idp: CraftingIssuer, auth: Authenticator, claims: dict
) -> None:
    assert (await refused(auth, idp.sign(idp.claims(**claims)))).reason == "malformed_name"


# names kube-apiserver would read differently from how they were written (Go trims ' ' and
# '\t' around header values) or that only look like another name: the class of the issue's
# "alice@example.com " and " system:kube-controller-manager"
LOOK_ALIKES = [" ", "\t", "\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff", "\u2028"]


@pytest.mark.parametrize("prefix", ["oidc:", ""])
@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("space", LOOK_ALIKES)
async def test_names_with_surrounding_whitespace_are_refused(
    idp: CraftingIssuer, make: Auths, prefix: str, where: str, space: str
) -> None:
    auth = await make(issuer_config(idp, username_prefix=prefix, groups_prefix=prefix))
    wrap = (lambda n: space + n) if where == "before" else (lambda n: n + space)
    for claims in (
        {"email": wrap("alice@example.com")},
        {"groups": ["dev", wrap("admins")]},
        {"email": wrap("system:kube-controller-manager")},
    ):
        err = await refused(auth, idp.sign(idp.claims(**claims)))
        assert (err.reason, err.code) == ("malformed_name", 401), claims
    err = await refused(auth, idp.sign(idp.claims(sub=wrap("u-alice"))))
    assert err.reason == "invalid"


@pytest.mark.parametrize(
    "name", ["System:kube-controller-manager", "SYSTEM:masters", "\u017fystem:masters"]
)
async def test_reserved_prefix_in_any_case_is_403(
    idp: CraftingIssuer, make: Auths, name: str
) -> None:
    auth = await make(issuer_config(idp, username_prefix="", groups_prefix=""))
    for claims in ({"email": name}, {"groups": [name]}):
        err = await refused(auth, idp.sign(idp.claims(**claims)))
        assert (err.reason, err.code) == ("reserved_identity", 403)


async def test_a_lone_surrogate_in_a_claim_is_refused(
    idp: CraftingIssuer, auth: Authenticator
) -> None:
    """JSON may carry "\\ud800": no UTF-8 header value can say it."""
    claims = idp.claims()
    header = {"alg": "RS256", "kid": "rsa1", "typ": "JWT"}
    for field, value in (("email", "alice\ud800@example.com"), ("sub", "u\udfff")):
        token = rs256(idp, header, {**claims, field: value})
        assert (await refused(auth, token)).reason in ("malformed_name", "invalid")


@pytest.mark.parametrize("sub", ["u-alice\r\nImpersonate-Group: system:masters", "u\x00x"])
async def test_control_characters_in_sub_are_refused(
    idp: CraftingIssuer, auth: Authenticator, sub: str
) -> None:
    await refused(auth, idp.sign(idp.claims(sub=sub)))


# -- the Authorization header --------------------------------------------------------------


async def test_token_from_header(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims())
    assert auth.token_from_header(b"Bearer " + token.encode()) == token
    assert auth.token_from_header(b"bearer " + token.encode()) == token
    assert auth.token_from_header(b"BEARER  " + token.encode() + b" ") == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic dXNlcjpwYXNz",
        b"Bearertoken",
        b"Token abc",
        b"Negotiate YII=",
        b"Bearer\tabc",
        b"abc.def.ghi",
    ],
)
async def test_header_not_bearer(auth: Authenticator, header: bytes | None) -> None:
    with pytest.raises(AuthError) as info:
        auth.token_from_header(header)
    assert (info.value.reason, info.value.code) == ("missing", 401)


async def test_header_not_ascii(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as info:
        auth.token_from_header("Bearer tökén".encode())
    assert info.value.reason == "malformed"


async def test_token_size_bound(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp), max_token_bytes=1024)
    assert auth.token_from_header(b"Bearer " + b"a" * 1024) == "a" * 1024
    for header in (b"Bearer " + b"a" * 1025, b"Bearer " + b"a" * 100_000):
        with pytest.raises(AuthError) as info:
            auth.token_from_header(header)
        assert info.value.reason == "too_large"
    big = idp.sign(idp.claims(pad="x" * 2000))
    with pytest.raises(AuthError) as info:
        auth.token_from_header(b"Bearer " + big.encode())
    assert info.value.reason == "too_large"


# -- keys: refetch, rotation, outage -------------------------------------------------------


async def test_unknown_kid_refetches_once_per_interval(
    own_idp: CraftingIssuer, make: Auths
) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.25)
    assert own_idp.jwks_fetches == 1
    await asyncio.sleep(0.3)
    token = own_idp.sign(own_idp.claims(), headers={"kid": "rotated-1"})
    assert (await refused(auth, token)).reason == "unknown_key"
    assert own_idp.jwks_fetches == 2  # exactly one refetch
    for i in range(5):  # a burst of unknown kids within the interval: no more fetches
        token = own_idp.sign(own_idp.claims(), headers={"kid": f"rotated-{i + 2}"})
        assert (await refused(auth, token)).reason == "unknown_key"
    assert own_idp.jwks_fetches == 2
    # known kids never cause a fetch
    assert (await auth.authenticate(own_idp.sign(own_idp.claims(sub="u-b")))).uid == "u-b"
    assert own_idp.jwks_fetches == 2
    await asyncio.sleep(0.3)
    await refused(auth, own_idp.sign(own_idp.claims(), headers={"kid": "again"}))
    assert own_idp.jwks_fetches == 3  # the interval is a rate, not a one-shot


async def test_concurrent_unknown_kids_fetch_once(own_idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.3)
    await asyncio.sleep(0.35)
    tokens = [own_idp.sign(own_idp.claims(), headers={"kid": f"k{i}"}) for i in range(10)]
    results = await asyncio.gather(*(auth.authenticate(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, AuthError) and r.reason == "unknown_key" for r in results)
    assert own_idp.jwks_fetches == 2


async def test_key_rotation_picked_up_on_unknown_kid(own_idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.3)
    old = own_idp.sign(own_idp.claims(sub="u-old"))
    assert (await auth.authenticate(old)).uid == "u-old"
    own_idp.keys["rsa2"] = ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    await asyncio.sleep(0.35)
    new = own_idp.sign(own_idp.claims(sub="u-new"), kid="rsa2")
    assert (await auth.authenticate(new)).uid == "u-new"
    assert own_idp.jwks_fetches == 2


async def test_withdrawn_key_revokes_cached_tokens(own_idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.2)
    by_rsa = own_idp.sign(own_idp.claims(sub="u-rsa"), kid="rsa1")
    by_ec = own_idp.sign(own_idp.claims(sub="u-ec"), kid="ec1")
    assert (await auth.authenticate(by_rsa)).uid == "u-rsa"
    assert (await auth.authenticate(by_ec)).uid == "u-ec"
    assert auth.cached(by_rsa) is not None
    del own_idp.keys["rsa1"]  # the IdP withdraws a compromised key
    await asyncio.sleep(0.25)
    # any refresh (here: triggered by an unknown kid) notices the withdrawal
    await refused(auth, own_idp.sign(own_idp.claims(), kid="ec1", headers={"kid": "unknown"}))
    assert auth.cached(by_rsa) is None
    assert (await refused(auth, by_rsa)).reason == "unknown_key"
    # tokens of the same issuer are re-verified; those whose key remains still work
    assert (await auth.authenticate(by_ec)).uid == "u-ec"


async def test_unchanged_key_set_keeps_the_cache(own_idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.2)
    token = own_idp.sign(own_idp.claims(sub="u-keep"))
    await auth.authenticate(token)
    await asyncio.sleep(0.25)
    await refused(auth, own_idp.sign(own_idp.claims(), headers={"kid": "unknown"}))
    assert own_idp.jwks_fetches == 2
    assert auth.cached(token) is not None


async def test_idp_down_cached_keys_still_validate(own_idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.2)
    own_idp.down()
    await asyncio.sleep(0.25)
    # an unknown kid while down: a failed refetch, a clean AuthError, keys kept
    err = await refused(auth, own_idp.sign(own_idp.claims(), headers={"kid": "new"}))
    assert err.reason == "unknown_key"
    assert auth.ready
    for kid in ("rsa1", "ec1"):
        identity = await auth.authenticate(own_idp.sign(own_idp.claims(sub=f"u-{kid}"), kid=kid))
        assert identity.uid == f"u-{kid}"


async def test_idp_down_at_start(own_idp: CraftingIssuer, make: Auths) -> None:
    own_idp.down()
    auth = await make(issuer_config(own_idp))
    assert not auth.ready
    err = await refused(auth, own_idp.sign(own_idp.claims()))
    assert err.reason == "idp_unavailable"
    assert err.code == 503  # the gateway's trouble, not the token's


async def test_unknown_issuer_tokens_cause_no_fetch(own_idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0)
    for i in range(5):
        await refused(auth, own_idp.sign(own_idp.claims(iss=f"https://x{i}.example.com")))
    assert own_idp.jwks_fetches == 1


async def test_requests_waiting_for_a_refetch_find_the_key_it_brought(
    own_idp: CraftingIssuer, make: Auths
) -> None:
    """Right after a rotation, every concurrent request signed by the new key verifies: one
    refetch, and those that waited for it look at the key set again (they were 401)."""
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0.3)
    own_idp.keys["rsa2"] = ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    await asyncio.sleep(0.35)
    tokens = [own_idp.sign(own_idp.claims(sub=f"u-{i}"), kid="rsa2") for i in range(5)]
    identities = await asyncio.gather(*(auth.authenticate(t) for t in tokens))
    assert [identity.uid for identity in identities] == [f"u-{i}" for i in range(5)]
    assert own_idp.jwks_fetches == 2


def jwks_answer(body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    """A JWKS response with `body` as it is (the IdP's fault)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with contextlib.suppress(OSError):  # the gateway stops reading a huge one
            handler.wfile.write(body)

    return answer


def kid_not_a_string(idp: CraftingIssuer) -> bytes:
    jwks = idp._jwks()
    for jwk in jwks["keys"]:
        jwk["kid"] = [jwk["kid"]]
    return json.dumps(jwks).encode()


@pytest.mark.parametrize(
    "body",
    [
        lambda idp: b'{"keys": 5}',
        lambda idp: b'{"keys": null}',
        kid_not_a_string,
        lambda idp: b'{"keys": [',
        lambda idp: b'{"keys": [], "pad": "' + b"x" * (600 * 1024) + b'"}',
    ],
    ids=["keys-a-number", "keys-null", "kid-a-list", "truncated", "huge"],
)
async def test_a_malformed_or_huge_jwks_keeps_the_cached_keys(
    own_idp: CraftingIssuer, make: Auths, body: Callable[[CraftingIssuer], bytes]
) -> None:
    """A JWKS of the wrong shape is a failed refresh like any other: the token with the
    unknown kid is a 401 (`unknown_key`), known keys keep verifying, and `refresh` itself
    never raises (it runs in the background loop too). Before, a non-list `keys` or a
    non-string `kid` escaped as a TypeError."""
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0)
    own_idp.jwks_fault = jwks_answer(body(own_idp))
    err = await refused(auth, own_idp.sign(own_idp.claims(), headers={"kid": "new"}))
    assert err.reason == "unknown_key"
    assert await auth.keys_for(own_idp.issuer).refresh(force=True) is False
    identity = await auth.authenticate(own_idp.sign(own_idp.claims(sub="u-known"), kid="ec1"))
    assert identity.uid == "u-known"


async def test_a_jwks_that_dribbles_is_given_up_and_stalls_no_other_request(
    own_idp: CraftingIssuer, make: Auths, caplog: pytest.LogCaptureFixture
) -> None:
    """An IdP that sends its JWKS a byte at a time (each read well within httpx's 5 s) is
    given up after `fetch_deadline` for the whole refresh; meanwhile a token whose key is
    known verifies at once. Before, the refresh, and every request waiting for it, lasted
    as long as the IdP kept dribbling."""
    auth = await make(issuer_config(own_idp), jwks_refresh_min_interval_seconds=0)
    auth.keys_for(own_idp.issuer).fetch_deadline = 1.0
    stop = threading.Event()

    def dribble(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        with contextlib.suppress(OSError):
            while not stop.wait(0.2):
                handler.wfile.write(b" ")
                handler.wfile.flush()

    own_idp.jwks_fault = dribble
    try:
        started = time.monotonic()
        pending = asyncio.ensure_future(
            auth.authenticate(own_idp.sign(own_idp.claims(), headers={"kid": "new"}))
        )
        await asyncio.sleep(0.1)
        known = own_idp.sign(own_idp.claims(sub="u-known"))
        assert (await asyncio.wait_for(auth.authenticate(known), 0.5)).uid == "u-known"
        with pytest.raises(AuthError) as info:
            await asyncio.wait_for(pending, 10)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
    assert info.value.reason == "unknown_key"
    assert 0.9 < elapsed < 3.0, elapsed
    assert "key refresh failed (keeping 2 cached keys): no answer within 1 s" in caplog.text


# -- the verified-token cache --------------------------------------------------------------


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The signing input of every RS256 signature the gateway checks from now on. Counted in
    PyJWT's algorithm object, which `jws` keeps in its table: a compiled `jws` calls its own
    functions directly, so wrapping `signature_valid` would count nothing there."""
    checks: list[bytes] = []
    real = jwt.get_algorithm_by_name("RS256")

    class Counting(type(real)):  # type: ignore[misc]
        def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
            checks.append(msg)
            return super().verify(msg, key, sig)

    monkeypatch.setitem(jws._algorithms, "RS256", Counting(real.hash_alg))
    return checks


async def test_cache_hit_does_no_signature_work(
    idp: CraftingIssuer, auth: Authenticator, signature_checks: list[bytes]
) -> None:
    token = idp.sign(idp.claims())
    assert auth.cached(token) is None
    first = await auth.authenticate(token)
    hits = auth.hits
    second = await auth.authenticate(token)
    assert second is first
    assert auth.cached(token) is first
    assert signature_checks == [token.rpartition(".")[0].encode()]
    assert auth.hits == hits + 2
    # A different token (even for the same user) is verified on its own.
    other = idp.sign(idp.claims(jti="other"))
    await auth.authenticate(other)
    assert signature_checks[1:] == [other.rpartition(".")[0].encode()]


async def test_cache_can_be_disabled(
    idp: CraftingIssuer, make: Auths, signature_checks: list[bytes]
) -> None:
    auth = await make(issuer_config(idp), token_cache_size=0)
    token = idp.sign(idp.claims())
    await auth.authenticate(token)
    assert auth.cached(token) is None
    await auth.authenticate(token)
    assert len(signature_checks) == 2


async def test_expired_token_is_not_served_from_cache(
    idp: CraftingIssuer, make: Auths, signature_checks: list[bytes]
) -> None:
    auth = await make(issuer_config(idp, leeway_seconds=5))
    exp = time.time() + 1.0  # a float exp: cached until exactly then (1 s: slack for a busy CI)
    token = idp.sign(idp.claims(exp=exp))
    identity = await auth.authenticate(token)
    assert identity.expires_at == exp
    assert auth.cached(token) is identity
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
    assert auth.cached(token) is None
    assert len(signature_checks) == 1
    await auth.authenticate(token)  # still inside the leeway: verified again, not cached
    assert len(signature_checks) == 2
    assert auth.cached(token) is None


async def test_token_accepted_in_leeway_is_not_cached(
    idp: CraftingIssuer, auth: Authenticator
) -> None:
    now = int(time.time())
    token = idp.sign(idp.claims(iat=now - 600, exp=now - 5))
    assert (await auth.authenticate(token)).uid == "u-alice"
    assert auth.cached(token) is None


async def test_cache_is_bounded(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp), token_cache_size=2)
    tokens = [idp.sign(idp.claims(jti=str(i))) for i in range(3)]
    for token in tokens:
        await auth.authenticate(token)
    assert auth.cached(tokens[0]) is None
    assert auth.cached(tokens[2]) is not None


async def test_cached_token_respects_max_token_age(idp: CraftingIssuer, make: Auths) -> None:
    auth = await make(issuer_config(idp, max_token_age_seconds=1, leeway_seconds=0))
    iat = time.time() - 0.5
    token = idp.sign(idp.claims(iat=iat))
    assert (await auth.authenticate(token)).uid == "u-alice"
    await asyncio.sleep(max(0.0, iat + 1.05 - time.time()))
    with pytest.raises(AuthError) as info:
        await auth.authenticate(token)
    assert info.value.reason == "too_old"


# -- the WebSocket bearer subprotocol ------------------------------------------------------


def _protocol(token: str) -> bytes:
    return b"base64url.bearer.authorization.k8s.io." + base64.urlsafe_b64encode(
        token.encode()
    ).rstrip(b"=")


async def test_token_from_websocket_subprotocol(idp: CraftingIssuer, auth: Authenticator) -> None:
    token = idp.sign(idp.claims())
    offered = [b"v5.channel.k8s.io, " + _protocol(token)]
    assert auth.token_from_header(None, offered) == token
    # an Authorization header wins; the subprotocol is then ignored (and stripped upstream)
    assert auth.token_from_header(b"Bearer other", offered) == "other"
    with pytest.raises(AuthError) as info:
        auth.token_from_header(None, [b"v5.channel.k8s.io"])
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    ("offered", "reason"),
    [
        ([b"base64url.bearer.authorization.k8s.io.%%%"], "malformed"),
        ([b"base64url.bearer.authorization.k8s.io."], "malformed"),
        ([_protocol("a b")], "malformed"),
        ([_protocol("tok\r\nX: y")], "malformed"),
        ([_protocol("x"), _protocol("y")], "malformed"),
        ([_protocol("x" * 20000)], "too_large"),
    ],
)
async def test_bad_websocket_subprotocol_tokens(
    auth: Authenticator, offered: list[bytes], reason: str
) -> None:
    with pytest.raises(AuthError) as info:
        auth.token_from_header(None, offered)
    assert info.value.reason == reason
