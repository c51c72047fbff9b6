"""The dev OpenID Provider (deploy/dev-idp, npm oidc-provider) and its test driver work."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.oidc import OIDCError, OIDCProvider, TokenSet, generate_jwks
from tests.support.pki import TestCA
from tests.support.tiers import tool_missing


@pytest.fixture(autouse=True)
def _node() -> None:
    if shutil.which("node") is None:
        tool_missing("node (Node.js) not on PATH: the dev OpenID Provider cannot run")


USERS = {
    "alice": {
        "email": "alice@example.com",
        "name": "Alice Admin",
        "groups": ["platform-admins", "team-a"],
        "password": "alice-pw",
    },
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": [], "password": "bob-pw"},
}


def verify(idp: OIDCProvider, token: str, *, audience: str = "vgate") -> dict:
    """Verify a JWT against the JWKS the provider serves (as a relying party would)."""
    with idp.http_client() as c:
        jwks_uri = c.get(idp.discovery_url).json()["jwks_uri"]
        jwks = jwt.PyJWKSet.from_dict(c.get(jwks_uri).json())
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks.keys if k.key_id == kid)
    return jwt.decode(
        token, key, algorithms=["RS256", "ES256"], audience=audience, issuer=idp.issuer
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCProvider]:
    with OIDCProvider(tmp_path_factory.mktemp("idp"), users=USERS) as p:
        yield p


def test_discovery_and_jwks(idp: OIDCProvider) -> None:
    doc = idp.discovery()
    assert doc["issuer"] == idp.issuer
    assert "S256" in doc["code_challenge_methods_supported"]
    assert "groups" in doc["scopes_supported"]
    assert doc["device_authorization_endpoint"] == f"{idp.issuer}/device/auth"
    keys = httpx.get(doc["jwks_uri"]).json()["keys"]
    assert [k["kid"] for k in keys] == [idp.kid]
    assert "d" not in keys[0]  # public keys only


def test_login_id_token_claims(idp: OIDCProvider) -> None:
    tokens = idp.login("alice")
    assert isinstance(tokens, TokenSet) and tokens.refresh_token and tokens.expires_in > 0
    claims = verify(idp, tokens.id_token)
    assert claims["iss"] == idp.issuer and claims["aud"] == "vgate"
    assert claims["sub"] == "alice"
    assert claims["email"] == "alice@example.com" and claims["name"] == "Alice Admin"
    assert claims["groups"] == ["platform-admins", "team-a"]
    assert jwt.get_unverified_header(tokens.id_token)["alg"] == "RS256"


def test_login_any_loopback_port_and_bad_inputs(idp: OIDCProvider) -> None:
    for uri in ("http://127.0.0.1:50123/callback", "http://localhost:8000/callback"):
        assert verify(idp, idp.login("bob", redirect_uri=uri).id_token)["groups"] == []
    with pytest.raises(OIDCError) as bad_uri:
        idp.login("bob", redirect_uri="http://attacker.test/callback")
    assert bad_uri.value.error == "invalid_redirect_uri"
    with pytest.raises(OIDCError, match="rejected"):
        idp.login("alice", password="wrong")
    with pytest.raises(OIDCError, match="rejected"):
        idp.login("mallory")


def test_refresh(idp: OIDCProvider) -> None:
    first = idp.login("alice")
    assert first.refresh_token
    again = idp.refresh(first.refresh_token)
    assert verify(idp, again.id_token)["sub"] == "alice"
    assert again.refresh_token and again.refresh_token != first.refresh_token  # rotated
    with pytest.raises(OIDCError) as reused:  # a rotated-away refresh token is dead
        idp.refresh(first.refresh_token)
    assert reused.value.error == "invalid_grant"


def test_portal_client_and_device_flow(idp: OIDCProvider) -> None:
    portal = idp.login("alice", client_id=idp.portal_client_id)
    assert verify(idp, portal.id_token, audience="vgate-portal")["email"] == "alice@example.com"
    device = idp.device_login("bob")
    assert verify(idp, device.id_token)["sub"] == "bob" and device.refresh_token


def test_resource_indicator_gives_jwt_access_token(idp: OIDCProvider) -> None:
    tokens = idp.login("alice", resource="https://gateway.test")
    assert jwt.get_unverified_header(tokens.access_token)["typ"] == "at+jwt"
    claims = verify(idp, tokens.access_token, audience="https://gateway.test")
    assert claims["sub"] == "alice" and claims["groups"] == ["platform-admins", "team-a"]


def test_es256_keys_and_short_ttls(tmp_path: Path) -> None:
    ttl = {"IdToken": 7, "AccessToken": 9, "RefreshToken": 11}
    with OIDCProvider(tmp_path, users=USERS, keys=["EC"], ttl=ttl) as idp:
        tokens = idp.login("alice")
        assert jwt.get_unverified_header(tokens.id_token)["alg"] == "ES256"
        claims = verify(idp, tokens.id_token)
        assert claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 7
        assert tokens.expires_in == 9


def test_rotate_keys_and_restart(tmp_path: Path) -> None:
    with OIDCProvider(tmp_path, users=USERS) as idp:
        issuer, port, old_kid = idp.issuer, idp.port, idp.kid
        before = idp.login("alice")
        idp.rotate_keys(keep_old=True)
        assert idp.kid != old_kid
        served = [k["kid"] for k in httpx.get(f"{issuer}/jwks").json()["keys"]]
        assert served == [idp.kid, old_kid]
        after = idp.login("alice")
        assert jwt.get_unverified_header(after.id_token)["kid"] == idp.kid
        assert verify(idp, before.id_token)["sub"] == "alice"  # old key still published
        idp.rotate_keys(keep_old=False)
        served = [k["kid"] for k in httpx.get(f"{issuer}/jwks").json()["keys"]]
        assert served == [idp.kid]
        idp.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{issuer}/jwks")
        idp.restart()
        assert (idp.issuer, idp.port) == (issuer, port)
        assert idp.discovery()["issuer"] == issuer
        assert before.refresh_token and idp.refresh(before.refresh_token).id_token  # stored


def test_tls_mode(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    leaf = ca.issue("idp", ["127.0.0.1", "localhost"])
    with OIDCProvider(tmp_path / "idp", users=USERS, tls=leaf) as idp:
        assert idp.issuer.startswith("https://127.0.0.1:")
        assert verify(idp, idp.login("alice").id_token)["iss"] == idp.issuer
        with pytest.raises(httpx.ConnectError):  # not trusted without the test CA
            httpx.get(idp.discovery_url)


def test_generate_jwks(tmp_path: Path) -> None:
    jwks = generate_jwks(tmp_path / "k.json", kind="EC", kid="k1")
    (key,) = jwks["keys"]
    assert key["kid"] == "k1" and key["alg"] == "ES256" and "d" in key
    assert (tmp_path / "k.json").stat().st_mode & 0o077 == 0
    assert jwt.PyJWK(key).algorithm_name == "ES256"
