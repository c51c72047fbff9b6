"""Starting recordings on the request path (one `SessionRecordings` per worker process).

For an exec or attach upgrade the policy decides; a recording that is wanted is opened
before the request goes upstream, so `required` can still refuse it with a 503 while
nothing has been upgraded. The session id is the request id (`Audit-ID` upstream, the
audit line's `request_id`), so the tenant's own audit log finds the same session.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from gateway.config.model import SessionRecording
from gateway.flow import Flow
from gateway.metrics import Metrics
from gateway.sessions.policy import Decision, RecordingPolicy
from gateway.sessions.recording import Limits, Recording
from gateway.sessions.sink import DirectorySink, RecordingUnavailable, SessionSink
from gateway.sessions.writer import RecordingThread
from gateway.streams.upgrade import StreamRequest

OPEN_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Wanted:
    """A session the policy wants recorded."""

    request: StreamRequest
    decision: Decision


class SessionRecordings:
    """The recordings of this process: policy, sink, the writing thread, and a high-water
    mark of what waited to be written (`peak_buffered`, bytes, any one session)."""

    def __init__(
        self,
        config: SessionRecording,
        sink: SessionSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.policy = RecordingPolicy(config)
        self.sink: SessionSink = sink or DirectorySink(
            config.directory,
            max_directory_bytes=config.max_directory_bytes,
            max_age_seconds=config.max_age_days * 86400,
            min_free_bytes=config.min_free_bytes,
        )
        self.thread = RecordingThread(self.sink)
        self.limits = Limits(config.buffer_bytes, config.max_session_bytes, config.flush_seconds)
        self.peak_buffered = 0

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.thread.close()

    def wanted(self, flow: Flow) -> Wanted | None:
        """Whether this upgrade is an exec/attach session the policy wants recorded."""
        if flow.tenant is None or flow.grant is None:
            return None
        request = StreamRequest.of(flow.target or flow.exchange.target, flow.exchange.head)
        if request is None or request.family != "remotecommand":
            return None
        decision = self.policy.decide(flow.tenant, flow.grant.roles)
        return None if decision.mode == "off" else Wanted(request, decision)

    async def open(self, flow: Flow, wanted: Wanted) -> Recording:
        """A new recording for the session; `RecordingUnavailable` says why not."""
        session_id = flow.exchange.request_id.decode()
        try:
            file = await asyncio.wait_for(
                asyncio.to_thread(self.sink.open, session_id, time.time()), OPEN_TIMEOUT_SECONDS
            )
        except (TimeoutError, RecordingUnavailable) as exc:
            self.count(flow.tenant, "refused" if wanted.decision.required else "unrecorded")
            if isinstance(exc, RecordingUnavailable):
                raise
            raise RecordingUnavailable(
                f"the recording storage did not answer within {OPEN_TIMEOUT_SECONDS:g} s"
            ) from None
        request, decision = wanted.request, wanted.decision
        keep_stdin = decision.keeps_stdin(request.tty)
        exchange = flow.exchange

        def abort(why: str) -> None:
            flow.reason = why
            exchange.conn.abort()

        tenant = flow.tenant or ""
        return Recording(
            session_id,
            self._meta(flow, wanted, keep_stdin),
            file,
            self.thread,
            self.limits,
            required=decision.required,
            stdin=keep_stdin,
            abort=abort,
            peak=self._note_peak,
            outcome=lambda outcome: self.count(tenant, outcome),
        )

    def count(self, tenant: str | None, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.session_recordings.labels(tenant or "", outcome).inc()

    def _note_peak(self, buffered: int) -> None:
        if buffered > self.peak_buffered:
            self.peak_buffered = buffered

    @staticmethod
    def _meta(flow: Flow, wanted: Wanted, keep_stdin: bool) -> dict[str, Any]:
        request, identity, grant = wanted.request, flow.identity, flow.grant
        assert identity is not None and grant is not None
        return {
            "session": flow.exchange.request_id.decode(),
            "user": identity.username,
            "uid": identity.uid,
            "issuer": identity.issuer,
            "groups": list(grant.groups),
            "roles": list(grant.roles),
            "tenant": flow.tenant,
            "namespace": request.namespace,
            "pod": request.pod,
            "container": request.container,
            "kind": request.kind,
            "command": list(request.command),
            "tty": request.tty,
            "stdin": request.stdin,
            "stdin_recorded": keep_stdin,
            "mode": wanted.decision.mode,
            "client_transport": request.client,
            "source": flow.source,
        }
