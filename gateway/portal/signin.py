"""The portal's ID token check: the gateway's own verifier, for the portal's client id.

Same issuer config (iss, algorithms, leeway, required claims, username/groups claims and
prefixes, the `system:` guard); only the audience is the portal's client id. `rejection`
turns a failed check into what the sign-in page says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.authn import jws
from gateway.authn.authenticator import decode_segment
from gateway.authn.errors import AuthError
from gateway.authn.keys import IssuerKeys
from gateway.authn.verify import IssuerVerifier
from gateway.config.model import Issuer
from gateway.identity import Identity


class PortalVerifier:
    """Verifies with the gateway's own key set for the issuer (`keys`, kept fresh by the
    gateway's authenticator), with the portal's client id as the audience."""

    def __init__(self, issuer: Issuer, keys: IssuerKeys, client_id: str) -> None:
        config = issuer.model_copy(update={"audiences": [client_id]})
        self._verifier = IssuerVerifier(config, keys)

    async def verify(self, id_token: str, nonce: str | None) -> Identity:
        """Verify like the gateway does; also the nonce of this login when given."""
        try:
            parsed = jws.parse(id_token)
        except jws.JWSError as exc:
            raise AuthError("malformed", f"ID token: {exc}") from None
        identity = await self._verifier.verify(parsed)
        if nonce is not None and identity.claims.get("nonce") != nonce:
            raise AuthError("bad_nonce", "the ID token's nonce does not belong to this sign-in")
        return identity


@dataclass(frozen=True)
class SignInRejected:
    """What the portal answers for an ID token that does not pass: status, title, message."""

    status: int
    title: str
    message: str


def _claims(id_token: str) -> dict[str, Any]:
    """The token's claims, unverified (only to say what was wrong with it)."""
    try:
        claims = decode_segment(id_token.split(".")[1])
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _when(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "an unreadable time"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def rejection(exc: AuthError, id_token: str, client_id: str) -> SignInRejected:
    """The truth about a rejected ID token, for the person and the operator.

    An identity the gateway refuses (reserved `system:` name) is a 403; a token that does
    not pass (audience, nonce, expiry, signature, claims) a 400; keys that cannot be loaded
    mean the IdP is unreachable (502).
    """
    claims = _claims(id_token)
    reason = exc.reason
    if reason == "idp_unavailable":
        return SignInRejected(
            502,
            "Sign-in failed",
            "The identity provider's signing keys "
            "could not be loaded to check the sign-in; try again shortly.",
        )
    if exc.code == 403:
        return SignInRejected(
            403, "Not allowed", f"Your identity cannot be used through this gateway: {exc.detail}."
        )
    if reason == "bad_audience":
        aud = claims.get("aud")
        audiences = ", ".join(map(str, aud)) if isinstance(aud, list) else str(aud)
        text = (
            f"The ID token's audience ({audiences[:200]}) does not include {client_id}, "
            "the portal's client id (portal.client_id): the identity provider issued it "
            "for another client."
        )
    elif reason == "bad_nonce":
        text = (
            "The ID token's nonce does not belong to this sign-in: the answer was "
            "replayed, injected, or belongs to a sign-in started in another tab. Sign in "
            "again."
        )
    elif reason == "expired":
        text = (
            f"The ID token had expired when it arrived (it expired at "
            f"{_when(claims.get('exp'))}; the gateway's clock says {_when(time.time())}). "
            "Check the clocks of the identity provider and the gateway."
        )
    elif reason == "not_yet_valid":
        text = (
            f"The ID token is not valid yet (not before {_when(claims.get('nbf'))}; the "
            f"gateway's clock says {_when(time.time())}). Check the clocks of the identity "
            "provider and the gateway."
        )
    elif reason in ("bad_signature", "unknown_key"):
        text = (
            "The ID token's signature does not verify with the keys the identity provider "
            f"publishes ({exc.detail})."
        )
    else:
        text = f"The ID token was rejected: {exc.detail}."
    return SignInRejected(400, "Sign-in failed", text)
