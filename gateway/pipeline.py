"""The request path, in order. Each step is one method below and one room of the package:

    1. route          which tenant, and what path goes upstream      gateway.route
    2. authenticate   bearer token → Identity (verified-token cache)  gateway.authn
    3. groups         directory groups → Membership (cached)          gateway.directory
    4. authorize      (identity, tenant) → Grant, or 403              gateway.policy
                      a tenant not routable yet: 503, its state       gateway.registry
       limit          rate and open-stream limits, or 429             gateway.limits
       nested         `kubectl --as`: SubjectAccessReview checks      gateway.policy.nested
       wake           a paused tenant: 503, or hold while it resumes  gateway.registry
       session        exec/attach: open its recording, or 503         gateway.sessions
    5. rewrite        the upstream head: credential + Impersonate-*   gateway.rewrite
    6. forward        stream the answer, or tunnel an upgrade         gateway.forward
    7. record         audit line + metrics, when the exchange ends    gateway.record

A step reads and fills in the request's `Flow` and returns `None` (go on), `DONE` (it
answered), or an awaitable resolving to one of those. The driver runs the steps
synchronously for as long as each answers at once — a cached token, cached groups and an
idle upstream connection cost no task — and creates one task only when a step must wait;
the client leaving cancels that task. Adding a step is adding a method and a line in
`steps`. A step whose feature is not configured (the limits) is not in `steps` at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from gateway.authn import Authenticator, AuthError
from gateway.authn.tenant_tokens import ReviewUnavailable as TokenReviewUnavailable
from gateway.authn.tenant_tokens import TenantTokens
from gateway.directory import (
    Directory,
    DirectoryRefused,
    DirectoryUnavailable,
    Membership,
    lookup_value,
)
from gateway.directory.overage import with_directory_groups
from gateway.endpoints import OwnEndpoints
from gateway.flow import Flow, Outcome
from gateway.forward import Forwarder
from gateway.forward.forwarder import is_streaming
from gateway.http.client_address import ClientAddress
from gateway.http.exchange import Exchange
from gateway.http.target import jwt_parameters
from gateway.identity import Deny, TooLarge
from gateway.limits import Limiter, Refusal
from gateway.names.kube import UnsafeName
from gateway.policy import PolicyEngine
from gateway.policy.nested import (
    BadImpersonation,
    NestedImpersonation,
    ReviewUnavailable,
    requested_identity,
)
from gateway.record import Recorder
from gateway.registry import TenantRegistry
from gateway.rewrite import credential_block, private_cookie_names, upstream_head
from gateway.route import Refused, Router
from gateway.sessions.sink import RecordingUnavailable
from gateway.sessions.start import SessionRecordings, Wanted
from gateway.tenant_api import CredentialRefused

log = logging.getLogger("vgate.pipeline")


class _Done:
    """The step answered the request (or handed it on for good): no further steps."""

    def __repr__(self) -> str:
        return "DONE"


DONE: Final = _Done()
Next = _Done | None
Step = Callable[[Flow], "Next | Awaitable[Next]"]

_WWW_AUTHENTICATE = (b"WWW-Authenticate", b'Bearer realm="vgate"')
_INVALID_TOKEN = (b"WWW-Authenticate", b'Bearer realm="vgate", error="invalid_token"')


class Pipeline:
    """Runs every exchange through `steps`; `done` records it when it ends."""

    def __init__(
        self,
        *,
        router: Router,
        registry: TenantRegistry,
        authenticator: Authenticator,
        policy: PolicyEngine,
        forwarder: Forwarder,
        recorder: Recorder,
        own: OwnEndpoints,
        client_address: ClientAddress | None = None,
        directory: Directory | None = None,
        nested: NestedImpersonation | None = None,
        wake_timeout: float = 60.0,
        private_cookies: Iterable[str] = (),
        limiter: Limiter | None = None,
        tenant_tokens: TenantTokens | None = None,
        sessions: SessionRecordings | None = None,
    ) -> None:
        self.steps: tuple[Step, ...] = (
            self.route,
            self.authenticate,
            self.groups,
            self.authorize,
            *((self.limit,) if limiter is not None else ()),
            self.nested,
            self.wake,
            *((self.session,) if sessions is not None else ()),
            self.rewrite,
            self.forward,
        )
        self.router = router
        self.registry = registry
        self.authenticator = authenticator
        self.directory = directory
        self.policy = policy
        self.nested_impersonation = nested
        self.forwarder = forwarder
        self.recorder = recorder
        self.own = own
        self.client_address = client_address if client_address and client_address.trusted else None
        self.wake_timeout = wake_timeout
        self.private_cookies = private_cookie_names(private_cookies)
        self.limiter = limiter
        self.tenant_tokens = tenant_tokens
        self.sessions = sessions
        self.overage_only = directory is not None and directory.config.lookup == "overage"
        # how an issuer's overage tokens name the groups the directory finds
        self.overage_names = {
            i.issuer: (i.overage_group_names, i.groups_prefix) for i in authenticator.config.issuers
        }
        self._tasks: set[asyncio.Task] = set()
        registry.on_change(forwarder.forget)
        if nested is not None:
            registry.on_change(nested.forget)
        if tenant_tokens is not None:
            registry.on_change(tenant_tokens.forget)

    # -- the driver ------------------------------------------------------------------------

    def dispatch(self, exchange: Exchange) -> None:
        """A request head is complete: run the steps."""
        flow = Flow(exchange)
        exchange.context = flow
        self._run(flow, 0)

    def done(self, exchange: Exchange) -> None:
        """The exchange ended (answered, or the client left): step 7, record it."""
        flow = exchange.context
        if not isinstance(flow, Flow):
            return
        if flow.held is not None and self.limiter is not None:
            self.limiter.release(flow.held)
            flow.held = None
        try:
            if flow.recording is not None:
                flow.recording.finish()  # the session's cast (never blocks)
            self.recorder.record(flow)
        except Exception:
            log.exception("recording failed")
        # the flow and the exchange refer to each other: without this the pair (and the
        # request head, its lists and tuples) would wait for the cycle collector instead
        # of being freed now
        exchange.context = None

    def _run(self, flow: Flow, start: int) -> None:
        """Run the steps from `start` while each answers at once; hand a pending one to
        `_wait`. (A slice only when resuming: the common request walks the tuple itself.)"""
        steps = self.steps if start == 0 else self.steps[start:]
        for offset, step in enumerate(steps):
            result = step(flow)
            if result is None:
                continue
            if result is not DONE:
                self._wait(flow, result, start + offset)  # type: ignore[arg-type]
            return

    def _wait(self, flow: Flow, pending: Awaitable[Next], index: int) -> None:
        """Await step `index`'s answer in a task (cancelled if the client leaves), then go on."""
        task = asyncio.get_running_loop().create_task(self._resume(flow, pending, index))
        flow.exchange.client_gone_hook = task.cancel
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self, flow: Flow, pending: Awaitable[Next], index: int) -> None:
        exchange = flow.exchange
        try:
            result = await pending
        except Exception:
            name = getattr(self.steps[index], "__name__", "?")
            log.exception("request %s: step %s failed", exchange.request_id.decode(), name)
            if not exchange.finished and not exchange.conn.closed:
                exchange.fail(500, f"internal error in the gateway (step {name})")
            return
        if exchange.conn.closed:
            return  # the client has gone: nothing more to do
        exchange.client_gone_hook = None
        if result is None:
            self._run(flow, index + 1)

    # -- 1. route ----------------------------------------------------------------------------

    def route(self, flow: Flow) -> Next:
        """The tenant (or the gateway's own endpoints). Whether a tenant exists is only
        said to an authenticated caller: an unknown or impossible tenant name is answered
        after the authenticate step, so an anonymous request gets the same 401 for any
        tenant name. A tenant the lifecycle knows but cannot route to yet goes on without an
        upstream: its state is said only to a caller the policy grants a role there."""
        exchange = flow.exchange
        if self.client_address is not None:
            flow.source, flow.forwarded_for = self.client_address.resolve(
                exchange.conn.peer, exchange.head.forwarded_for
            )
        route = self.router.route(exchange.host, exchange.target)
        if route is None:
            # recorded without the query: OAuth callbacks to the portal carry a code
            flow.target = exchange.target.partition(b"?")[0]
            flow.end(Outcome.LOCAL)
            self.own.handle(exchange)
            return DONE
        if isinstance(route, Refused):
            if route.names_no_tenant:
                return None  # flow.upstream stays None: 404 once authenticated
            flow.end(Outcome.REFUSED, route.message)
            exchange.fail(route.code, route.message)
            return DONE
        flow.target = route.target
        upstream = self.registry.get(route.tenant)
        if upstream is None:
            if self.registry.state(route.tenant) is not None:
                flow.tenant = route.tenant  # known, not routable yet: 503 once authorized
                return None
            # not recorded as a tenant: metrics are labelled by tenant, and names in
            # requests are the client's choice (the audit reason keeps it)
            flow.requested_tenant = route.tenant
            return None
        flow.tenant = route.tenant
        flow.upstream = upstream
        return None

    # -- 2. authenticate ---------------------------------------------------------------------

    def authenticate(self, flow: Flow) -> Next | Awaitable[Next]:
        head = flow.exchange.head
        protocols = (
            head.websocket_protocols
            if (head.authorization is None and flow.exchange.upgrade)
            else None
        )
        try:
            token = self.authenticator.token_from_header(head.authorization, protocols)
        except AuthError as exc:
            return self._unauthenticated(flow, exc)
        identity = self.authenticator.cached(token)
        if identity is not None:
            self.recorder.token_cache_hit()
            flow.identity = identity
            return self._authenticated(flow)
        upstream = flow.upstream  # None: an unknown tenant, answered once authenticated
        if (
            upstream is not None
            and upstream.token_passthrough
            and self.tenant_tokens is not None
            and not self.authenticator.issued_here(token)
        ):
            return self._tenant_native(flow, self.tenant_tokens, token)
        self.recorder.token_cache_miss()
        try:
            identity = self.authenticator.verify_now(token)
        except AuthError as exc:
            return self._unauthenticated(flow, exc)
        if identity is None:  # the issuer's keys must be fetched again first
            return self._verify(flow, token)
        flow.identity = identity
        return self._authenticated(flow)

    def _tenant_native(
        self, flow: Flow, tokens: TenantTokens, token: str
    ) -> Next | Awaitable[Next]:
        """A token the tenant itself may have issued: its cached TokenReview answer, or a
        review at the tenant. It goes upstream as it is (`flow.credential`)."""
        assert flow.upstream is not None
        try:
            identity = tokens.cached(flow.upstream, token)
        except AuthError as exc:
            return self._unauthenticated(flow, exc)
        if identity is None:
            return self._review_token(flow, tokens, token)
        flow.identity = identity
        flow.credential = b"Bearer " + token.encode()
        return self._authenticated(flow)

    async def _review_token(self, flow: Flow, tokens: TenantTokens, token: str) -> Next:
        assert flow.upstream is not None
        try:
            flow.identity = await tokens.authenticate(flow.upstream, token)
        except AuthError as exc:
            return self._unauthenticated(flow, exc)
        except CredentialRefused as refused:
            return self._gateway_refused(flow, refused)
        except TokenReviewUnavailable as unavailable:
            flow.end(Outcome.UNAVAILABLE, str(unavailable))
            flow.exchange.fail(
                503,
                f'tenant "{flow.tenant}" could not check this token right now; try again',
                extra=[(b"Retry-After", b"1")],
            )
            return DONE
        flow.credential = b"Bearer " + token.encode()
        return self._authenticated(flow)

    async def _verify(self, flow: Flow, token: str) -> Next:
        try:
            flow.identity = await self.authenticator.authenticate(token)
        except AuthError as exc:
            return self._unauthenticated(flow, exc)
        return self._authenticated(flow)

    def _authenticated(self, flow: Flow) -> Next:
        """The connection leaves its address's count of unauthenticated ones, and the caller
        may now learn that the tenant does not exist."""
        conn = flow.exchange.conn
        if conn.unauthenticated:
            conn.authenticated()
        if flow.tenant is not None:  # routable, or known to the lifecycle (see authorize)
            return None
        name = flow.requested_tenant
        flow.end(Outcome.REFUSED, f"unknown tenant {name[:63]!r}" if name else "no such tenant")
        flow.exchange.fail(404, f'tenant "{name}" not found' if name else "no such tenant")
        return DONE

    def _unauthenticated(self, flow: Flow, exc: AuthError) -> Next:
        self.recorder.auth_failed(exc.reason)
        if exc.code == 401:
            flow.end(Outcome.UNAUTHENTICATED, exc.detail)
            header = _WWW_AUTHENTICATE if exc.reason == "missing" else _INVALID_TOKEN
            flow.exchange.fail(401, "Unauthorized", extra=[header])
        elif exc.code == 503:  # no signing keys (IdP down since start): fail closed, not 401
            # no Retry-After: client-go would retry each request ten times, and kubectl say
            # nothing for minutes instead of this message
            flow.end(Outcome.UNAVAILABLE, exc.detail)
            flow.exchange.fail(
                503,
                "the gateway cannot check tokens right now: the signing keys of your "
                "identity provider could not be loaded; try again shortly",
            )
        else:
            flow.end(Outcome.REFUSED, exc.detail)
            flow.exchange.fail(
                403, "the identity in this token may not be used through this gateway"
            )
        return DONE

    # -- 3. groups ---------------------------------------------------------------------------

    def groups(self, flow: Flow) -> Next | Awaitable[Next]:
        """Without a directory, nothing to do (but a token with group overage is refused:
        its groups are unknown). With one: a cached answer goes on at once; a miss awaits
        one lookup; no answer → 503. A tenant-native identity is the tenant's, not the
        directory's; with `lookup: overage` only overage tokens are looked up."""
        directory = self.directory
        identity = flow.identity
        assert identity is not None
        if directory is None:
            if identity.groups_overage:
                return self._overage_unresolved(flow)
            return None
        if identity.reviewed_by is not None or (self.overage_only and not identity.groups_overage):
            return None
        value = lookup_value(identity, directory.config.user_claim)
        if value is None:
            return self._deny(
                flow,
                f"token has no {directory.config.user_claim!r} claim to find the user "
                "in the directory",
                f'user has no access to tenant "{flow.tenant}"',
            )
        try:
            membership = directory.cached(value)
        except DirectoryUnavailable as exc:
            return self._directory_down(flow, exc)
        if membership is not None:
            self._member(flow, membership)
            return None
        return self._look_up(flow, directory, value)

    async def _look_up(self, flow: Flow, directory: Directory, value: str) -> Next:
        try:
            membership = await directory.membership(value)
        except DirectoryUnavailable as exc:
            return self._directory_down(flow, exc)
        except DirectoryRefused as refused:  # this user's answer (too many groups): no outage
            return self._deny(
                flow,
                f"directory: {refused}",
                "the directory lists more groups for you than this gateway accepts "
                "(ldap.max_groups); ask the platform team",
            )
        self._member(flow, membership)
        return None

    def _member(self, flow: Flow, membership: Membership) -> None:
        """The directory's answer; an overage token's groups are completed from it."""
        flow.membership = membership
        identity = flow.identity
        if identity is not None and identity.groups_overage:
            form, prefix = self.overage_names.get(identity.issuer, ("name", ""))
            flow.identity = with_directory_groups(identity, membership, form, prefix)

    def _overage_unresolved(self, flow: Flow) -> Next:
        assert flow.identity is not None
        flow.end(
            Outcome.REFUSED,
            f"{flow.identity.username}: token has group overage and no directory is configured",
        )
        flow.fail(
            403,
            "your token does not list your groups (group overage: the IdP names a "
            "claim source instead) and this gateway has no directory to look them "
            "up; ask the platform team",
        )
        return DONE

    def _directory_down(self, flow: Flow, exc: DirectoryUnavailable) -> Next:
        """503, without `Retry-After`: client-go would retry each request ten times, so
        kubectl would hang for a minute or more (discovery retried too) before failing the
        same way. Users whose groups are cached are not asked to wait at all."""
        flow.end(Outcome.UNAVAILABLE, str(exc))
        flow.exchange.fail(
            503,
            "the gateway cannot read your groups from the directory right now; try again shortly",
        )
        return DONE

    # -- 4. authorize ------------------------------------------------------------------------

    def authorize(self, flow: Flow) -> Next:
        identity, tenant = flow.identity, flow.tenant
        assert identity is not None and tenant is not None
        try:
            decision = (
                self.policy.decide(identity, tenant)
                if flow.membership is None
                else self.policy.decide(identity, tenant, flow.membership)
            )
        except UnsafeName as unsafe:  # measuring the headers met a name that cannot leave
            return self._not_passed_on(flow, unsafe)
        if isinstance(decision, Deny):
            if isinstance(decision, TooLarge):
                flow.end(Outcome.REFUSED, decision.reason)
                flow.exchange.fail(431, decision.message)
                return DONE
            return self._deny(
                flow,
                decision.reason,
                f'user "{identity.username}" has no access to tenant "{tenant}"',
            )
        flow.grant = decision
        if flow.upstream is None:
            return self._not_routable(flow)
        return None

    def _gateway_token_in_query(self, target: bytes) -> str | None:
        """The name of a query parameter that holds a token of one of the gateway's
        issuers, if any: a client's credential, which never goes upstream."""
        for name, value in jwt_parameters(target):
            if self.authenticator.issued_here(value):
                return name
        return None

    @staticmethod
    def _token_in_query(flow: Flow, name: str) -> Next:
        """400: the query carries a token of the gateway's identity provider. Forwarded,
        it would reach the tenant's API server and its audit log, where whoever reads
        them could replay it at the gateway for every tenant its user may use."""
        flow.end(Outcome.REFUSED, f"a token of the gateway's issuer in query parameter {name!r}")
        flow.fail(
            400,
            f"the query parameter {name!r} holds a token of the gateway's identity provider: "
            "the gateway never passes a client's token on to a cluster. Send it as an "
            "'Authorization: Bearer' header instead",
        )
        return DONE

    @staticmethod
    def _not_passed_on(flow: Flow, unsafe: UnsafeName) -> Next:
        """403: a name of this identity cannot travel as an impersonation header."""
        flow.end(Outcome.REFUSED, f"not impersonated: {unsafe}")
        flow.fail(403, "the identity of this request cannot be passed on safely")
        return DONE

    def _not_routable(self, flow: Flow) -> Next:
        """A granted request for a tenant without a route: the route may have come while
        the request waited (go on); else 503 naming the tenant's phase, step and the last
        error's reference (its text only in the audit line), or 404 if the tenant is gone
        meanwhile."""
        tenant = flow.tenant
        assert tenant is not None
        upstream = self.registry.get(tenant)
        if upstream is not None:
            flow.upstream = upstream
            return None
        return self._unavailable_tenant(flow, tenant)

    def _unavailable_tenant(self, flow: Flow, tenant: str) -> Next:
        """503 with `Retry-After` and a `Status` naming the lifecycle's state of `tenant`; 404
        when the lifecycle does not know it (any more)."""
        state = self.registry.state(tenant)
        if state is None:
            flow.end(Outcome.REFUSED, "tenant gone")
            flow.exchange.fail(404, f'tenant "{tenant}" not found')
            return DONE
        flow.end(Outcome.UNAVAILABLE, f"tenant not ready: {state.describe_for_operators()}")
        flow.fail(
            503,
            state.message(tenant),
            details=state.details(tenant),
            extra=[(b"Retry-After", b"%d" % state.retry_after)],
        )
        return DONE

    def limit(self, flow: Flow) -> Next:
        """Rate and open-stream limits (only in `steps` when some are configured): 429 with
        `Retry-After` and a `Status` client-go backs off on."""
        assert self.limiter is not None and flow.grant is not None
        exchange = flow.exchange
        result = self.limiter.admit(
            flow.grant, exchange.upgrade or is_streaming(flow.target or exchange.target)
        )
        if result is None:
            return None
        if not isinstance(result, Refusal):
            flow.held = result
            return None
        self.recorder.limited(flow.tenant or "", result.reason)
        flow.end(Outcome.LIMITED, result.message)
        exchange.respond(429, result.body, extra=list(result.headers))
        return DONE

    def _deny(self, flow: Flow, reason: str, message: str) -> Next:
        """Refused by policy: the reason to the audit log, `message` to the client (403)."""
        flow.end(Outcome.DENY, reason)
        self.recorder.denied(flow.tenant or "")
        flow.fail(403, message)
        return DONE

    def nested(self, flow: Flow) -> Next | Awaitable[Next]:
        """`kubectl --as`: refused, or each requested attribute checked by a
        SubjectAccessReview at the tenant when nested impersonation is enabled."""
        exchange = flow.exchange
        if not exchange.head.impersonation:
            return None
        if self.nested_impersonation is None or flow.credential is not None:
            flow.end(Outcome.DENY, "client sent Impersonate-* headers")
            flow.fail(
                403,
                "impersonation (kubectl --as/--as-group/--as-uid) is not "
                "allowed through the vgate gateway",
            )
            return DONE
        try:
            requested = requested_identity(exchange.headers)
        except BadImpersonation as exc:
            flow.end(Outcome.REFUSED, str(exc))
            exchange.fail(400, f"invalid impersonation request: {exc}")
            return DONE
        return self._review(flow, self.nested_impersonation, requested)

    async def _review(self, flow: Flow, nested: NestedImpersonation, requested) -> Next:
        assert flow.upstream is not None and flow.grant is not None
        try:
            decision = await nested.decide(flow.upstream, flow.grant, requested)
        except CredentialRefused as refused:
            return self._gateway_refused(flow, refused)
        except ReviewUnavailable as unavailable:
            flow.end(Outcome.REFUSED, str(unavailable))
            flow.exchange.fail(
                503,
                "the tenant's API server could not check the impersonation request; try again",
                extra=[(b"Retry-After", b"1")],
            )
            return DONE
        if isinstance(decision, Deny):
            flow.end(Outcome.DENY, decision.reason)
            flow.fail(403, decision.reason)
            return DONE
        flow.grant = decision
        return None

    def _gateway_refused(self, flow: Flow, exc: CredentialRefused) -> Next:
        """The tenant refused a review the gateway itself asked for: the gateway's
        credential there lacks a right. Not the caller's fault, and no retry will help."""
        flow.end(Outcome.REFUSED, str(exc))
        flow.exchange.fail(502, f"{exc} (the gateway cannot check this request)")
        return DONE

    # -- wake a paused tenant -------------------------------------------------------------

    def wake(self, flow: Flow) -> Next | Awaitable[Next]:
        """A paused tenant: 503, or (auto-wake) hold the request until it runs again."""
        upstream = flow.upstream
        assert upstream is not None
        if not upstream.paused:
            return None
        if upstream.wake is None:
            flow.end(Outcome.PAUSED, "tenant paused")
            flow.exchange.fail(
                503,
                f'tenant "{upstream.name}" is paused; ask a platform administrator to resume it',
            )
            return DONE
        return self._wake(flow)

    async def _wake(self, flow: Flow) -> Next:
        upstream = flow.upstream
        assert upstream is not None and upstream.wake is not None
        try:
            async with asyncio.timeout(self.wake_timeout):
                woke = await upstream.wake()
        except TimeoutError:
            woke = False
        except Exception:
            log.exception("waking tenant %s failed", upstream.name)
            woke = False
        current = self.registry.get(upstream.name)
        if woke and current is not None and not current.paused:
            flow.upstream = current
            return None
        if current is None:  # deleted meanwhile, or no longer routable
            return self._unavailable_tenant(flow, upstream.name)
        state = self.registry.state(upstream.name)
        if state is not None and state.last_error:  # the resume fails: say so, with its reference
            return self._unavailable_tenant(flow, upstream.name)
        flow.end(Outcome.PAUSED, "tenant waking up")
        flow.exchange.fail(
            503,
            f'tenant "{upstream.name}" is starting; retry shortly',
            extra=[(b"Retry-After", b"10")],
        )
        return DONE

    # -- exec/attach session recording -----------------------------------------------------

    def session(self, flow: Flow) -> Next | Awaitable[Next]:
        """An exec/attach upgrade the policy wants recorded: open the recording first (in a
        thread). A `required` one that cannot be written is a 503 naming why, before
        anything is upgraded; a `best-effort` one is logged and the session goes on."""
        if not flow.exchange.upgrade:
            return None
        assert self.sessions is not None
        wanted = self.sessions.wanted(flow)
        if wanted is None:
            return None
        return self._open_recording(flow, self.sessions, wanted)

    async def _open_recording(
        self, flow: Flow, sessions: SessionRecordings, wanted: Wanted
    ) -> Next:
        try:
            flow.recording = await sessions.open(flow, wanted)
        except RecordingUnavailable as exc:
            if not wanted.decision.required:
                log.warning(
                    "request %s tenant %s: session not recorded (best-effort): %s",
                    flow.exchange.request_id.decode(),
                    flow.tenant,
                    exc,
                )
                return None
            flow.end(Outcome.UNAVAILABLE, f"session recording required and unavailable: {exc}")
            flow.exchange.fail(
                503,
                f"this {wanted.request.kind} session must be recorded and "
                f"the recording cannot be written: {exc}",
                extra=[(b"Retry-After", b"10")],
            )
            return DONE
        return None

    # -- 5. rewrite and 6. forward ------------------------------------------------------------

    def rewrite(self, flow: Flow) -> Next:
        """The head that leaves for the tenant (kept on the flow for the forward step)."""
        exchange, upstream, grant = flow.exchange, flow.upstream, flow.grant
        assert upstream is not None and grant is not None
        target = flow.target or b"/"
        if b"eyJ" in target or b"%" in target:  # a JWT in the query, maybe encoded
            leaked = self._gateway_token_in_query(target)
            if leaked is not None:
                return self._token_in_query(flow, leaked)
        authorization = flow.credential
        if authorization is not None:  # a tenant-native token goes as itself: no impersonation
            identity_block = b""
        else:
            try:
                identity_block = credential_block(
                    upstream.authorization() if upstream.authorization else None, grant
                )
            except UnsafeName as unsafe:  # the last check of every name: nothing leaves
                return self._not_passed_on(flow, unsafe)
        if exchange.chunked_in:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif exchange.content_length:
            framing = b"Content-Length: %d\r\n" % exchange.content_length
        else:
            framing = b""
        flow.upstream_head = upstream_head(
            exchange.method,
            target,
            exchange.head,
            authority=upstream.authority,
            authorization=authorization,
            identity_block=identity_block,
            request_id=exchange.request_id,
            framing=framing,
            upgrade=exchange.head.upgrade if exchange.upgrade else None,
            forwarded_for=flow.forwarded_for or exchange.conn.peer.encode() or None,
            private_cookies=self.private_cookies,
        )
        return None

    def forward(self, flow: Flow) -> Next:
        upstream = flow.upstream
        assert upstream is not None
        self.registry.activity[upstream.name] = time.time()
        flow.end(Outcome.ALLOW)
        flow.exchange.continue_if_expected()
        self.forwarder.forward(flow)
        if flow.exchange.streaming:
            self.recorder.stream_opened(flow)
        return DONE
