"""The portal's ID token check: the gateway's own verifier, for the portal's client id.

Same issuer config (iss, algorithms, leeway, required claims, username/groups claims and
prefixes, the `system:` guard); only the audience is the portal's client id.
"""

from __future__ import annotations

import base64
import json

from gateway.authn.errors import AuthError
from gateway.authn.keys import IssuerKeys
from gateway.authn.verify import IssuerVerifier
from gateway.config.model import OIDC
from gateway.identity import Identity


class PortalVerifier:
    def __init__(self, oidc: OIDC, issuer: str, client_id: str) -> None:
        base = next(i for i in oidc.issuers if i.issuer == issuer)
        config = base.model_copy(update={"audiences": [client_id]})
        self.keys = IssuerKeys(
            config,
            min_interval=oidc.jwks_refresh_min_interval_seconds,
            max_age=oidc.jwks_max_age_seconds,
        )
        self._verifier = IssuerVerifier(config, self.keys)

    async def verify(self, id_token: str, nonce: str | None) -> Identity:
        """Verify like the gateway does; also the nonce of this login when given."""
        try:
            header = json.loads(base64.urlsafe_b64decode(
                id_token.split(".")[0] + "=" * (-len(id_token.split(".")[0]) % 4)))
        except (ValueError, IndexError):
            raise AuthError("malformed", "ID token header is not base64url JSON") from None
        if not isinstance(header, dict):
            raise AuthError("malformed", "ID token header is not an object")
        identity = await self._verifier.verify(id_token, header)
        if nonce is not None and identity.claims.get("nonce") != nonce:
            raise AuthError("bad_nonce", "the ID token's nonce does not belong to this sign-in")
        return identity

    async def close(self) -> None:
        await self.keys.close()
