"""The OpenID Provider as `vgate login` sees it: discovery, token endpoint calls (authlib).

Every failure becomes a `LoginError` whose message tells a person what went wrong: a wrong
issuer, an unreachable IdP, a denied consent, an expired device code.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from gateway.login.errors import IdPUnreachable, LoginError

__all__ = ["IdPUnreachable", "LoginError", "OAuthFailure", "Provider", "Tokens"]


def _transport_errors() -> tuple[type[Exception], ...]:
    """What a failed request raises: httpx's errors, and httpx2's, which authlib's OAuth
    clients use instead of httpx when that package is installed."""
    errors: list[type[Exception]] = [httpx.HTTPError]
    try:
        import httpx2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        errors.append(httpx2.HTTPError)
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_DOCUMENT_BYTES = 512 * 1024


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    authorization: str
    token: str
    device_authorization: str | None
    revocation: str | None


@dataclass(frozen=True)
class Tokens:
    id_token: str
    refresh_token: str | None
    expires_at: float  # the ID token's exp
    claims: dict[str, Any]


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class Provider:
    """One issuer and one client id; every network call has `timeout` seconds."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        *,
        verify: ssl.SSLContext | bool = True,
        timeout: float = 10.0,
        client_secret: str | None = None,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.verify = verify
        self.timeout = timeout
        self.client_secret = client_secret
        self._endpoints: Endpoints | None = None

    def _unreachable(self, exc: Exception, what: str = "") -> IdPUnreachable:
        text = _describe(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            text += (
                " (the IdP's certificate is not trusted: give its CA with --issuer-ca-file"
                " or --issuer-ca-data)"
            )
        prefix = f"{what}: " if what else ""
        return IdPUnreachable(f"{prefix}cannot reach the identity provider {self.issuer}: {text}")

    # -- discovery ------------------------------------------------------------------------

    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = self._discover()
        return self._endpoints

    def _discover(self) -> Endpoints:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with httpx.Client(verify=self.verify, timeout=self.timeout) as c:
                resp = c.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if resp.status_code != 200:
            raise LoginError(
                f"{self.issuer} does not look like an OpenID Provider: its discovery document "
                f"{url} answered HTTP {resp.status_code} (is the issuer URL right?)"
            )
        try:
            if len(resp.content) > MAX_DOCUMENT_BYTES:
                raise ValueError("too large")
            doc = resp.json()
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError:
            raise LoginError(f"{url} is not a JSON discovery document") from None
        if doc.get("issuer") != self.issuer:
            raise LoginError(
                f"wrong issuer: {url} names its issuer {str(doc.get('issuer'))[:200]!r}, "
                f"not {self.issuer!r}"
            )
        try:
            return Endpoints(
                issuer=self.issuer,
                authorization=str(doc["authorization_endpoint"]),
                token=str(doc["token_endpoint"]),
                device_authorization=doc.get("device_authorization_endpoint"),
                revocation=doc.get("revocation_endpoint"),
            )
        except KeyError as exc:
            raise LoginError(f"{url} lacks {exc.args[0]}") from None

    # -- token endpoint -------------------------------------------------------------------

    def client(self, **kw: Any) -> OAuth2Client:
        auth_method = "client_secret_basic" if self.client_secret else "none"
        return OAuth2Client(
            client_id=self.client_id,
            client_secret=self.client_secret,
            token_endpoint_auth_method=auth_method,
            verify=self.verify,
            timeout=self.timeout,
            **kw,
        )

    def _token_call(self, what: str, call: Any, *, nonce: str | None = None) -> Tokens:
        try:
            token = call()
        except OAuthError as exc:
            raise OAuthFailure(what, exc.error or "error", exc.description or "") from None
        except TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc, what) from None
        return self.tokens_from(dict(token), nonce=nonce)

    def tokens_from(self, token: dict[str, Any], *, nonce: str | None) -> Tokens:
        """Check the token response's ID token (iss, aud, exp, nonce) and keep what we need.

        The signature is the gateway's business; this answer came straight from the token
        endpoint over TLS (OIDC Core 3.1.3.7), so the claims are read, not re-verified.
        """
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise LoginError("the identity provider returned no ID token (is 'openid' a scope?)")
        claims = _jwt_claims(id_token)
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if claims.get("iss") != self.issuer:
            raise LoginError(f"the ID token's issuer {claims.get('iss')!r} is not {self.issuer!r}")
        if self.client_id not in auds:
            raise LoginError(f"the ID token is not for client {self.client_id!r}")
        if nonce is not None and claims.get("nonce") != nonce:
            raise LoginError("the ID token's nonce does not match this login (replayed answer?)")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time():
            raise LoginError(
                "the identity provider returned an ID token that has expired "
                "(is this machine's clock right?)"
            )
        refresh = token.get("refresh_token")
        return Tokens(id_token, refresh if isinstance(refresh, str) else None, float(exp), claims)

    def exchange_code(self, code: str, *, redirect_uri: str, verifier: str, nonce: str) -> Tokens:
        ep = self.endpoints()
        with self.client(redirect_uri=redirect_uri) as c:
            return self._token_call(
                "code exchange",
                lambda: c.fetch_token(
                    ep.token, grant_type="authorization_code", code=code, code_verifier=verifier
                ),
                nonce=nonce,
            )

    def refresh(self, refresh_token: str) -> Tokens:
        ep = self.endpoints()
        with self.client() as c:
            return self._token_call(
                "refresh", lambda: c.refresh_token(ep.token, refresh_token=refresh_token)
            )

    def device_start(self, scope: str) -> dict[str, Any]:
        ep = self.endpoints()
        if not ep.device_authorization:
            raise LoginError(f"{self.issuer} does not offer the device authorization grant")
        try:
            with httpx.Client(verify=self.verify, timeout=self.timeout) as c:
                resp = c.post(
                    ep.device_authorization, data={"client_id": self.client_id, "scope": scope}
                )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or not isinstance(body, dict) or "device_code" not in body:
            err = body.get("error") if isinstance(body, dict) else None
            desc = body.get("error_description", "") if isinstance(body, dict) else ""
            raise OAuthFailure(
                "device authorization", str(err or f"HTTP {resp.status_code}"), str(desc or "")
            )
        return body

    def device_poll(self, device_code: str) -> Tokens:
        """One poll; raises `OAuthFailure` (authorization_pending, slow_down, ...)."""
        ep = self.endpoints()
        with self.client() as c:
            return self._token_call(
                "device login",
                lambda: c.fetch_token(ep.token, grant_type=DEVICE_GRANT, device_code=device_code),
            )

    def revoke(self, refresh_token: str) -> None:
        """Revoke a refresh token (RFC 7009) at the discovery document's revocation endpoint.

        Returns only when the IdP confirmed it (HTTP 200); otherwise raises `LoginError`
        (`IdPUnreachable` when it could not be asked) saying why.
        """
        ep = self.endpoints()
        if not ep.revocation:
            raise LoginError(
                f"{self.issuer} offers no token revocation endpoint (no "
                "revocation_endpoint in its discovery document)"
            )
        try:
            with self.client() as c:
                resp = c.revoke_token(
                    ep.revocation, token=refresh_token, token_type_hint="refresh_token"
                )
        except TRANSPORT_ERRORS as exc:
            raise self._unreachable(exc, "revocation") from None
        except OAuthError as exc:
            raise OAuthFailure("revocation", exc.error or "error", exc.description or "") from None
        if resp.status_code == 200:
            return
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            raise OAuthFailure(
                "revocation", body["error"], str(body.get("error_description") or "")
            )
        raise LoginError(
            f"revocation refused by the identity provider: {ep.revocation} "
            f"answered HTTP {resp.status_code}"
        )


class OAuthFailure(LoginError):
    """An OAuth error answer from the token endpoint."""

    def __init__(self, what: str, error: str, description: str) -> None:
        self.error = error
        self.description = description
        super().__init__(
            f"{what} refused by the identity provider: {error}"
            + (f" ({description[:300]})" if description else "")
        )


def _jwt_claims(token: str) -> dict[str, Any]:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        raise LoginError("the identity provider returned a malformed ID token") from None
    if not isinstance(claims, dict):
        raise LoginError("the identity provider returned a malformed ID token")
    return claims
