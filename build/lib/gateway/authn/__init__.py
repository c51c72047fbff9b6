"""Step 2 of the request path: who is calling? Bearer JWTs from configured OIDC issuers."""

from gateway.authn.authenticator import Authenticator, AuthError

__all__ = ["AuthError", "Authenticator"]
