"""Verify one JWT against one configured issuer and turn its claims into an `Identity`."""

from __future__ import annotations

import time

from gateway.authn import jws
from gateway.authn.errors import AuthError
from gateway.authn.keys import IssuerKeys, PublicKey
from gateway.config.model import Issuer
from gateway.identity import Identity
from gateway.names import kube

MAX_GROUPS = 512
MAX_REMEMBERED_NAMES = 4096
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub")


class IssuerVerifier:
    """Validates signature, iss, aud, exp, nbf, iat, required claims and the alg allowlist."""

    def __init__(self, issuer: Issuer, keys: IssuerKeys) -> None:
        self.issuer = issuer
        self.keys = keys
        self._algorithms = list(issuer.algorithms)
        # claim values that passed the name gate (`_name`), with the prefixed name each
        # becomes: users, uids and above all groups come again in token after token, and the
        # gate is a pure function of the value (bounded: `MAX_REMEMBERED_NAMES` each)
        self._users: dict[str, str] = {}
        self._uids: dict[str, str] = {}
        self._group_names: dict[str, str] = {}

    async def verify(self, token: jws.CompactJWS) -> Identity:
        """The identity of a parsed token whose `iss` names this issuer, once its signature
        and claims check out (fetching the issuer's keys again for an unknown `kid`);
        `AuthError` otherwise."""
        alg = self._algorithm(token)
        return self.check(token, await self.keys.key_for(token.header.get("kid"), alg))

    def key_now(self, token: jws.CompactJWS) -> PublicKey | None:
        """The key to check `token` with when it is at hand; None when the key set must be
        fetched again first (`verify` does). `AuthError` for an algorithm not allowed."""
        return self.keys.key_now(token.header.get("kid"), self._algorithm(token))

    def _algorithm(self, token: jws.CompactJWS) -> str:
        alg = token.header.get("alg")
        if alg not in self._algorithms:
            raise AuthError("bad_algorithm", f"alg {alg!r} is not allowed for {self.issuer.issuer}")
        return alg

    def check(self, token: jws.CompactJWS, key: PublicKey) -> Identity:
        """Signature and claims of `token` under `key`: its identity, or `AuthError`."""
        alg = token.header["alg"]
        if not jws.signature_valid(token, alg, key):
            raise AuthError("bad_signature", "token signature does not verify")
        claims = token.payload
        now = time.time()
        try:
            jws.check_claims(
                claims,
                require=REQUIRED_CLAIMS,
                issuer=self.issuer.issuer,
                audiences=self.issuer.audiences,
                leeway=self.issuer.leeway_seconds,
                now=now,
            )
        except jws.ClaimError as exc:
            raise AuthError(exc.code, str(exc)) from None
        return self._identity(claims, now)

    def _identity(self, claims: dict, now: float) -> Identity:
        cfg = self.issuer
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise AuthError("invalid", "iat is not a number")
        if cfg.max_token_age_seconds and now - iat > cfg.max_token_age_seconds + cfg.leeway_seconds:
            raise AuthError("too_old", "token was issued too long ago")
        for name, want in cfg.required_claims.items():
            if claims.get(name) != want:
                raise AuthError("required_claim", f"claim {name!r} lacks its required value")
        sub = claims.get("sub")
        if not isinstance(sub, str) or (
            sub not in self._uids and not self._passed(self._uids, sub, "uid")
        ):
            raise AuthError("invalid", "sub is missing or malformed")
        raw_user = claims.get(cfg.username_claim)
        if not isinstance(raw_user, str) or not raw_user:
            raise AuthError("no_username", f"claim {cfg.username_claim!r} missing or not a string")
        if cfg.username_claim == "email" and claims.get("email_verified", True) is not True:
            raise AuthError("email_unverified", "email_verified is false")
        username = self._users.get(raw_user) or self._gated(
            self._users, cfg.username_prefix, raw_user, "user"
        )
        known = self._group_names
        groups = tuple(
            known.get(g) or self._gated(known, cfg.groups_prefix, g, "group")
            for g in self._groups(claims)
        )
        expires_at = float(claims["exp"])
        if cfg.max_token_age_seconds:  # the cache must not outlive the age bound either
            expires_at = min(expires_at, iat + cfg.max_token_age_seconds + cfg.leeway_seconds)
        return Identity(
            username=username,
            uid=sub,
            groups=groups,
            issuer=cfg.issuer,
            expires_at=expires_at,
            claims=claims,
            groups_overage=self._overage(claims),
        )

    @staticmethod
    def _passed(known: dict[str, str], sub: str, kind: kube.Kind) -> bool:
        """Whether `sub` passes the name gate as a `kind` (remembered when it does)."""
        if kube.problem(sub, kind) is not None:
            return False
        _remember(known, sub, sub)
        return True

    def _gated(self, known: dict[str, str], prefix: str, raw: str, kind: kube.Kind) -> str:
        """`prefix + raw` through the name gate (`_name`), remembered when it passes."""
        name = _name(prefix, raw, kind, self.issuer.issuer)
        _remember(known, raw, name)
        return name

    def _overage(self, claims: dict) -> bool:
        """The token says the user's groups are too many to carry (Entra ID's group
        overage): `_claim_names` sends the groups claim to a claim source, or `hasgroups`
        is true."""
        claim = self.issuer.groups_claim
        if not claim:
            return False
        names = claims.get("_claim_names")
        return (isinstance(names, dict) and claim in names) or claims.get("hasgroups") is True

    def _groups(self, claims: dict) -> list[str]:
        if not self.issuer.groups_claim:
            return []
        value = claims.get(self.issuer.groups_claim)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise AuthError("malformed", f"claim {self.issuer.groups_claim!r} is not a string list")
        if len(value) > MAX_GROUPS:
            raise AuthError("malformed", f"more than {MAX_GROUPS} groups in the token")
        return value


def _remember(known: dict[str, str], raw: str, name: str) -> None:
    if len(known) >= MAX_REMEMBERED_NAMES:
        known.clear()
    known[raw] = name


def _name(prefix: str, raw: str, kind: kube.Kind, issuer: str) -> str:
    """`prefix + raw` through the name gate (`gateway.names.kube`). The claim itself must
    pass too: with a prefix, `" alice"` would not be trimmed by the API server, but it is
    a look-alike of `alice` all the same."""
    try:
        if prefix:
            why = kube.problem(raw, kind)
            if why is not None:
                raise kube.UnsafeName(kind, raw, why)
        return kube.check(prefix + raw, kind)
    except kube.UnsafeName as exc:
        if exc.reserved:
            raise AuthError("reserved_identity", f"{exc} (from {issuer})", code=403) from None
        raise AuthError("malformed_name", f"unsafe {exc}") from None
