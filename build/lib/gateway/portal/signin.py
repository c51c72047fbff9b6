"""The portal's ID token check: the gateway's own verifier, for the portal's client id.

Same issuer config (iss, algorithms, leeway, required claims, username/groups claims and
prefixes, the `system:` guard); only the audience is the portal's client id.
"""

from __future__ import annotations

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
            header = decode_segment(id_token.split(".")[0])
        except (ValueError, UnicodeDecodeError):
            raise AuthError("malformed", "ID token header is not base64url JSON") from None
        identity = await self._verifier.verify(id_token, header)
        if nonce is not None and identity.claims.get("nonce") != nonce:
            raise AuthError("bad_nonce", "the ID token's nonce does not belong to this sign-in")
        return identity
