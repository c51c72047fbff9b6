"""The portal's starlette app: sign-in (code + PKCE via authlib), tenant page, kubeconfigs.

Routes (all under the gateway's own host):
  GET  /                               the tenant page (signs in first when needed)
  GET  /login                          start the sign-in at the IdP
  GET  /oauth2/callback                the IdP's answer (state + nonce checked)
  GET  /tenants/{tenant}/kubeconfig    ?form=host|path; 403 without a role on the tenant
  GET  /ca.crt                         the gateway's CA (`portal.ca_file`), to trust it
  POST /logout                         with the session's CSRF token; ends the session
                                       server-side too (`SignedOutSessions`)
"""

from __future__ import annotations

import hmac
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.starlette_client import OAuth
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.authn.errors import AuthError
from gateway.authn.keys import IssuerKeys
from gateway.config.model import GatewayConfig
from gateway.directory.errors import DirectoryUnavailable
from gateway.http.asgi import SERVED_AS
from gateway.identity import Identity
from gateway.login.kubeconfig import (
    KubeconfigSpec,
    bash_command,
    kubeconfig_yaml,
    powershell_command,
)
from gateway.login.provider import TRANSPORT_ERRORS
from gateway.portal.access import TenantAccess, TenantRole
from gateway.portal.ca import CertificateAuthority
from gateway.portal.pages import render
from gateway.portal.sessions import SessionStoreError, SignedOutSessions
from gateway.portal.signin import PortalVerifier, rejection

log = logging.getLogger("vgate.portal")

SESSION_COOKIE = "vgate_portal"
CALLBACK_PATH = "/oauth2/callback"
MIN_SECRET_BYTES = 32
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def read_secret(path: Path, what: str, *, min_bytes: int = 1) -> str:
    """A secret file's content (stripped); ValueError naming the file when unusable."""
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror}") from None
    if len(value.encode()) < min_bytes:
        raise ValueError(f"{what} {path}: needs at least {min_bytes} bytes")
    return value


@dataclass(frozen=True)
class KubeconfigForms:
    """How kubeconfig servers are written: by hostname and/or by path prefix, `preferred`
    first."""

    public_url: str
    base_domain: str | None
    path_prefix: str | None
    preferred: str = "host"

    def servers(self, tenant: str) -> dict[str, str]:
        """Form → server URL, the preferred form first."""
        out = {}
        scheme, _, hostport = self.public_url.partition("://")
        if self.base_domain:
            port = hostport.rpartition(":")[2] if ":" in hostport.lstrip("[") else ""
            port = port if port.isdigit() else ""
            out["host"] = f"{scheme}://{tenant}.{self.base_domain}" + (f":{port}" if port else "")
        if self.path_prefix:
            out["path"] = f"{self.public_url}{self.path_prefix}/{tenant}"
        if self.preferred in out:
            out = {self.preferred: out[self.preferred], **out}
        return out

    def dns_note(self) -> str | None:
        """What the hostname form needs, when it is not the preferred one."""
        if not self.base_domain or not self.path_prefix or self.preferred == "host":
            return None
        host = f"<tenant>.{self.base_domain}"
        return (
            f"The hostname form needs `{host}` to resolve to this gateway: a wildcard "
            f"DNS record `*.{self.base_domain}`, or a line `<gateway address> {host}` per "
            "tenant in /etc/hosts. The path prefix form needs nothing."
        )


def state_lines(tr: TenantRole) -> tuple[str, str | None]:
    """The tenant's state for people: a short label and, when not Ready, what it means."""
    state = tr.state
    if state is None:
        return "Ready", None
    if state.phase == "Paused":
        return "Paused", (
            "The first request wakes it: kubectl waits while it starts."
            if tr.wakes
            else "Ask a platform engineer to resume it."
        )
    if state.phase == "Deleting":
        return "Being deleted", state.describe()
    if state.last_error:
        return "Failing", (
            f"{state.describe()}. The lifecycle manager keeps retrying; if this "
            "persists, ask a platform engineer."
        )
    if tr.routable:  # being changed (an upgrade, a resume): its API server answers
        return state.phase, f"{state.describe()}. It answers meanwhile."
    return state.phase, (
        f'{state.describe()}. kubectl answers "not ready yet" until it is '
        "Ready; the kubeconfig works from then on."
    )


class Portal:
    """The portal for one gateway config; `app` is the ASGI app to mount at `/`."""

    def __init__(self, config: GatewayConfig, access: TenantAccess, keys: IssuerKeys) -> None:
        portal = config.portal
        if portal is None:
            raise ValueError("no portal section in the config")
        self.settings = portal
        self.access = access
        # claims the access lookup needs after sign-in (the directory searches by one)
        self.kept_claims = (config.ldap.user_claim,) if config.ldap else ()
        self.secure = not portal.insecure_http
        self.forms = KubeconfigForms(
            portal.public_url,
            config.routing.base_domain,
            config.routing.path_prefix,
            portal.preferred_form,
        )
        issuer = next(i for i in config.oidc.issuers if i.issuer == portal.issuer)
        self.ca_pem = portal.ca_file.read_bytes() if portal.ca_file else None
        try:
            self.ca = CertificateAuthority.from_pem(self.ca_pem) if self.ca_pem else None
        except ValueError:
            raise ValueError(f"portal.ca_file {portal.ca_file}: no PEM certificate") from None
        try:
            self.sessions = SignedOutSessions(
                portal.session_store_file, max_entries=portal.max_signed_out_sessions
            )
        except SessionStoreError as exc:
            raise ValueError(str(exc)) from None
        self.issuer_ca_pem = issuer.ca_file.read_bytes() if issuer.ca_file else None
        self.verifier = PortalVerifier(issuer, keys, portal.client_id)
        client_secret = read_secret(portal.client_secret_file, "portal.client_secret_file")
        cookie_secret = read_secret(
            portal.cookie_secret_file, "portal.cookie_secret_file", min_bytes=MIN_SECRET_BYTES
        )
        client_kwargs: dict[str, Any] = {
            "scope": " ".join(portal.scopes),
            "code_challenge_method": "S256",
            "timeout": 10.0,
        }
        if issuer.ca_file:
            client_kwargs["verify"] = ssl.create_default_context(cafile=str(issuer.ca_file))
        discovery = issuer.discovery_url or (
            portal.issuer.rstrip("/") + "/.well-known/openid-configuration"
        )
        self.oauth = OAuth()
        self.oauth.register(
            "idp",
            client_id=portal.client_id,
            client_secret=client_secret,
            server_metadata_url=discovery,
            client_kwargs=client_kwargs,
        )
        self.app = Starlette(
            routes=[
                Route("/", self.home, methods=["GET"]),
                Route("/login", self.login, methods=["GET"]),
                Route(CALLBACK_PATH, self.callback, methods=["GET"]),
                Route("/tenants/{tenant}/kubeconfig", self.download, methods=["GET"]),
                Route("/ca.crt", self.ca_certificate, methods=["GET"]),
                Route("/logout", self.logout, methods=["POST"]),
            ],
            middleware=[
                Middleware(
                    SessionMiddleware,
                    secret_key=cookie_secret,
                    session_cookie=SESSION_COOKIE,
                    max_age=portal.session_lifetime_seconds,
                    same_site="lax",
                    https_only=self.secure,
                    path="/",
                )
            ],
            exception_handlers={
                404: self._not_found,
                405: self._not_allowed,
                HTTPException: self._http_error,
            },
        )

    # -- helpers --------------------------------------------------------------------------

    def _page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(
            render(template, **context), status_code=status, headers=_SECURITY_HEADERS
        )

    def _error(self, status: int, title: str, message: str, *, retry: bool = True) -> Response:
        return self._page("message.html", status, title=title, message=message, retry=retry)

    async def _identity(self, request: Request) -> Identity | Response | None:
        """The signed-in identity, while the session's absolute lifetime lasts and it was
        not signed out (None), or an error page when sign-outs cannot be checked."""
        s = request.session
        until, sid, iat = s.get("until"), s.get("sid"), s.get("iat")
        if (
            not isinstance(until, int | float)
            or until <= time.time()
            or "user" not in s
            or not isinstance(sid, str)
            or not isinstance(iat, int | float)
        ):
            return None
        try:
            if await self.sessions.is_signed_out(sid, float(iat)):
                return None
        except SessionStoreError as exc:
            log.warning("portal sessions cannot be checked: %s", exc)
            return self._error(
                503, "Try again shortly", "The portal cannot check its sessions right now."
            )
        identity = Identity(
            username=s["user"],
            uid=s["sub"],
            groups=tuple(s.get("groups", ())),
            issuer=s["iss"],
            expires_at=float(until),
            claims=s.get("claims", {}),
        )
        setattr(request.state, SERVED_AS, identity)  # the audit line names the user
        return identity

    async def _tenants(self, identity: Identity) -> list[TenantRole] | Response:
        """The identity's tenants, or an error page when the directory cannot answer."""
        try:
            return await self.access(identity)
        except DirectoryUnavailable:
            return self._error(
                503,
                "Try again shortly",
                "The gateway cannot read your groups from the directory right now.",
            )

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return self._error(404, "Not found", "There is no such page here.", retry=False)

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return self._error(
            405, "Method not allowed", "This page does not take that method.", retry=False
        )

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Any other refusal starlette raises (a form it cannot parse: too many fields, a
        broken multipart body) is a page like ours, with the security headers."""
        code = exc.status_code if isinstance(exc, HTTPException) else 400
        code = code if 400 <= code < 500 else 400
        return self._error(
            code, "Bad request", "The portal could not read this request.", retry=False
        )

    def _spec(self, tenant: str, server: str) -> KubeconfigSpec:
        return KubeconfigSpec(
            tenant=tenant,
            server=server,
            issuer=self.settings.issuer,
            client_id=self.settings.cli_client_id,
            ca_pem=self.ca_pem,
            command=self.settings.login_command,
            issuer_ca_pem=self.issuer_ca_pem,
        )

    # -- routes ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        identity = await self._identity(request)
        if isinstance(identity, Response):
            return identity
        if identity is None:
            request.session.clear()
            return RedirectResponse("/login", status_code=303, headers=_SECURITY_HEADERS)
        tenants = await self._tenants(identity)
        if isinstance(tenants, Response):
            return tenants
        rows = []
        for tr in tenants:
            servers = self.forms.servers(tr.tenant)
            preferred = next(iter(servers.values()))
            spec = self._spec(tr.tenant, preferred)
            label, detail = state_lines(tr)
            rows.append(
                {
                    "tenant": tr.tenant,
                    "roles": tr.roles,
                    "forms": list(servers),
                    "bash": bash_command(spec),
                    "powershell": powershell_command(spec),
                    "server": preferred,
                    "state": label,
                    "state_detail": detail,
                    "deleting": tr.state is not None and tr.state.phase == "Deleting",
                }
            )
        return self._page(
            "tenants.html",
            user=identity.username,
            name=request.session.get("name", ""),
            rows=rows,
            csrf=request.session.get("csrf", ""),
            issuer=self.settings.issuer,
            install_hint=self.settings.install_hint,
            ca=self.ca,
            dns_note=self.forms.dns_note(),
        )

    async def login(self, request: Request) -> Response:
        request.session.clear()
        redirect_uri = self.settings.public_url + CALLBACK_PATH
        nonce = secrets.token_urlsafe(24)  # kept with the state, checked in the ID token
        try:
            redirect = await self.oauth.idp.authorize_redirect(request, redirect_uri, nonce=nonce)
        except Exception as exc:  # discovery failed: the IdP is down or misconfigured
            log.warning("portal sign-in cannot start: %s", str(exc)[:300])
            return self._error(
                503, "Sign-in unavailable", "The identity provider cannot be reached right now."
            )
        # it carries the state and nonce (and the cookie with the PKCE verifier): no-store
        redirect.headers.update(_SECURITY_HEADERS)
        return redirect

    async def callback(self, request: Request) -> Response:
        """The IdP's answer: state (this browser's sign-in), code exchange, ID token check.

        Only an IdP that cannot be reached is a 502; a refused exchange or a token that does
        not pass (audience, nonce, expiry, signature, ...) is a 4xx naming the reason.
        """
        params = request.query_params
        if params.get("error"):
            error = params.get("error", "")
            request.session.clear()
            if (refused := await self._mixed_up(params.get("iss"))) is not None:
                return refused
            if error == "access_denied":
                return self._error(
                    403, "Sign-in cancelled", "The identity provider did not sign you in."
                )
            return self._error(
                400, "Sign-in failed", f"The identity provider answered: {error[:100]}"
            )
        idp = self.oauth.idp
        state, code = params.get("state"), params.get("code")
        pending = await idp.framework.get_state_data(request.session, state) if state else None
        request.session.clear()
        if not isinstance(pending, dict) or not code:
            return self._error(
                400,
                "Sign-in expired",
                "This sign-in answer does not belong to your browser session "
                "(or it took too long).",
            )
        if (refused := await self._mixed_up(params.get("iss"))) is not None:
            return refused
        try:
            token = await idp.fetch_access_token(
                code=code,
                redirect_uri=pending.get("redirect_uri"),
                code_verifier=pending.get("code_verifier"),
            )
        except OAuthError as exc:
            log.warning(
                "portal sign-in: the IdP refused the code exchange: %s %s",
                exc.error,
                (exc.description or "")[:200],
            )
            return self._error(
                400,
                "Sign-in failed",
                f"The identity provider refused to complete the sign-in: {str(exc.error)[:100]}.",
            )
        except TRANSPORT_ERRORS as exc:
            log.warning(
                "portal sign-in: the IdP cannot be reached for the code exchange: %s",
                str(exc)[:300] or type(exc).__name__,
            )
            return self._error(
                502,
                "Sign-in failed",
                "The identity provider could not be reached to complete the sign-in.",
            )
        except Exception as exc:  # an answer that is no token response
            log.warning(
                "portal sign-in: unusable code exchange answer: %s: %s",
                type(exc).__name__,
                str(exc)[:200],
            )
            return self._error(
                502,
                "Sign-in failed",
                "The identity provider's answer to the code exchange is not a token response.",
            )
        id_token, nonce = token.get("id_token"), pending.get("nonce")
        if not isinstance(id_token, str) or not isinstance(nonce, str):
            log.warning("portal sign-in: the token response holds no ID token")
            return self._error(
                400,
                "Sign-in failed",
                "The identity provider returned no ID token (is 'openid' among portal.scopes?).",
            )
        try:
            identity = await self.verifier.verify(id_token, nonce)
        except AuthError as exc:
            why = rejection(exc, id_token, self.settings.client_id)
            log.warning("portal sign-in rejected (%s): %s", exc.reason, why.message)
            return self._error(why.status, why.title, why.message)
        setattr(request.state, SERVED_AS, identity)  # the audit line names who signed in
        now = time.time()
        request.session.update(
            {
                "user": identity.username,
                "sub": identity.uid,
                "groups": list(identity.groups),
                "iss": identity.issuer,
                "until": int(now + self.settings.session_lifetime_seconds),
                "sid": secrets.token_urlsafe(18),
                "iat": now,
                "csrf": secrets.token_urlsafe(24),
                "name": str(identity.claims.get("name", ""))[:200],
                "claims": {
                    c: identity.claims[c]
                    for c in self.kept_claims
                    if isinstance(identity.claims.get(c), str)
                },
            }
        )
        return RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)

    async def _mixed_up(self, iss: str | None) -> Response | None:
        """A 400 (logged) when an authorization answer's `iss` (RFC 9207) is not the
        portal's issuer, else None. A different one is an answer meant for another IdP's
        sign-in (a mix-up); a missing one is refused when the IdP's metadata says it always
        sends it."""
        why = await self._foreign_issuer(iss)
        if why is None:
            return None
        log.warning("portal sign-in refused: %s", why)
        return self._error(400, "Sign-in failed", why)

    async def _foreign_issuer(self, iss: str | None) -> str | None:
        """Why `iss` is not the answer of the portal's issuer, or None."""
        if iss is None:
            try:  # cached once loaded (this worker may not have started the sign-in)
                metadata = await self.oauth.idp.load_server_metadata()
            except Exception:  # the IdP is down: the code exchange will say so
                metadata = {}
            if metadata.get("authorization_response_iss_parameter_supported") is True:
                return (
                    "The sign-in answer does not name its identity provider (iss), "
                    f"which {self.settings.issuer} always does."
                )
            return None
        if iss != self.settings.issuer:
            return (
                f"The sign-in answer comes from another identity provider ({iss[:100]}), "
                f"not {self.settings.issuer}."
            )
        return None

    async def download(self, request: Request) -> Response:
        identity = await self._identity(request)
        if isinstance(identity, Response):
            return identity
        if identity is None:
            return RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        tenant = request.path_params["tenant"]
        form = request.query_params.get("form", "host")
        allowed = await self._tenants(identity)
        if isinstance(allowed, Response):
            return allowed
        if not any(tr.tenant == tenant for tr in allowed):
            return self._error(
                403, "No access", f"You have no role on the tenant {tenant[:63]}.", retry=False
            )
        servers = self.forms.servers(tenant)
        if form not in servers:
            return self._error(404, "Not found", f"No {form[:10]} form here.", retry=False)
        body = kubeconfig_yaml(self._spec(tenant, servers[form]))
        return Response(
            body,
            media_type="application/yaml",
            headers={
                **_SECURITY_HEADERS,
                "Content-Disposition": f'attachment; filename="kubeconfig-{tenant}-{form}.yaml"',
            },
        )

    async def logout(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=4)
        sent = str(form.get("csrf", ""))
        expected = str(request.session.get("csrf", ""))
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            return self._error(
                403,
                "Sign-out refused",
                "The sign-out form was not from this page; reload and retry.",
            )
        sid, until = request.session.get("sid"), request.session.get("until")
        request.session.clear()
        if isinstance(sid, str) and isinstance(until, int | float):
            try:
                await self.sessions.sign_out(sid, float(until))
            except SessionStoreError as exc:
                log.warning("portal sign-out not recorded: %s", exc)
                return self._error(
                    503,
                    "Sign-out incomplete",
                    "Your browser forgot the session, but the portal could not "
                    "record the sign-out: a copy of the session cookie would "
                    "still work until it expires. Try again shortly.",
                )
        return self._page(
            "message.html",
            title="Signed out",
            message="You are signed out of the vgate portal.",
            retry=True,
        )

    async def ca_certificate(self, request: Request) -> Response:
        if self.ca is None:
            return self._error(
                404,
                "Not found",
                "This gateway's certificate is from a public CA: there is nothing to install.",
                retry=False,
            )
        return Response(
            self.ca.pem,
            media_type="application/x-pem-file",
            headers={
                **_SECURITY_HEADERS,
                "Content-Disposition": 'attachment; filename="vgate-ca.crt"',
            },
        )


def build_portal(config: GatewayConfig, access: TenantAccess, keys: IssuerKeys) -> Portal:
    """The portal; `keys` is the gateway authenticator's key set for `portal.issuer`."""
    return Portal(config, access, keys)
