"""What an exec/attach/port-forward upgrade request asks for, and the request and answer
heads the gateway writes when it speaks the other upgrade than the client.

The client's request is read once (`StreamRequest.of`). To bridge, the gateway rewrites the
head the rewrite step built (its credential, impersonation and request id stay, line for
line): the method becomes what native clients of the other upgrade send (GET for
WebSocket, POST for SPDY — so the tenant authorizes the verb it always does for that
upgrade), the client's upgrade fields go, and the gateway's own take their place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

from gateway.streams import channels, websocket

if TYPE_CHECKING:
    from gateway.http.headers import RequestHeaders

WEBSOCKET, SPDY = "websocket", "spdy"
_PATH = re.compile(rb"^/api/v1/namespaces/([^/?]+)/pods/([^/?]+)/(exec|attach|portforward)/?$")
_BEARER = "base64url.bearer.authorization.k8s.io."
# request fields that belong to one upgrade and never go with the other
_UPGRADE_FIELDS = (
    b"connection:",
    b"upgrade:",
    b"sec-websocket-",
    b"x-stream-protocol-version:",
    b"content-length:",
    b"transfer-encoding:",
)


def other(protocol: str) -> str:
    return SPDY if protocol == WEBSOCKET else WEBSOCKET


def _true(values: list[str]) -> bool:
    return bool(values) and values[-1].lower() in ("true", "1")


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One exec/attach/port-forward upgrade request, as the client sent it."""

    kind: str  # exec | attach | portforward
    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    client: str  # WEBSOCKET | SPDY
    offered: tuple[str, ...]  # the sub-protocols the client offered, in its order
    websocket_key: bytes

    @property
    def family(self) -> str:
        """`remotecommand` (exec, attach) or `portforward`: tenants may differ per family."""
        return "portforward" if self.kind == "portforward" else "remotecommand"

    @classmethod
    def of(cls, target: bytes, headers: RequestHeaders) -> StreamRequest | None:
        """The stream request `target` (path and query as sent upstream) names, or None
        for any other upgrade."""
        path, _, query = target.partition(b"?")
        found = _PATH.match(path)
        if found is None:
            return None
        upgrade = (headers.upgrade or b"").strip().lower()
        params: dict[str, list[str]] = {}
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            params.setdefault(name, []).append(value)
        key = b""
        if upgrade == b"websocket":
            client = WEBSOCKET
            offered = [
                p.strip()
                for value in headers.websocket_protocols
                for p in value.decode("latin-1").split(",")
            ]
            key = headers.get(b"sec-websocket-key") or b""
        else:
            client = SPDY
            offered = [
                p.strip()
                for name, value in headers.fields
                if name.lower() == b"x-stream-protocol-version"
                for p in value.decode("latin-1").split(",")
            ]
        kind = found.group(3).decode()
        return cls(
            kind=kind,
            namespace=unquote(found.group(1).decode("latin-1")),
            pod=unquote(found.group(2).decode("latin-1")),
            container=(params.get("container") or [""])[-1],
            command=tuple(params.get("command", ())),
            tty=_true(params.get("tty", [])),
            stdin=_true(params.get("stdin", [])),
            stdout=_true(params.get("stdout", [])),
            stderr=_true(params.get("stderr", [])),
            client=client,
            offered=tuple(p for p in offered if p and not p.startswith(_BEARER)),
            websocket_key=key.strip(),
        )

    # -- what the gateway can translate -----------------------------------------------

    def client_protocol(self) -> str | None:
        """The sub-protocol the gateway answers the client with when it bridges (the
        client's first choice among those it can translate), or None: no bridge."""
        if self.client == WEBSOCKET:
            usable = (
                (channels.WS_PORTFORWARD,)
                if self.kind == "portforward"
                else channels.WS_REMOTECOMMAND
            )
            if not self.websocket_key:
                return None
        else:
            usable = (
                (channels.PORTFORWARD,)
                if self.kind == "portforward"
                else channels.SPDY_REMOTECOMMAND
            )
        return next((p for p in self.offered if p in usable), None)

    def tenant_protocols(self, transport: str) -> tuple[str, ...]:
        """The sub-protocols the gateway offers a tenant over `transport` (over WebSocket
        only those of API servers that authorize the upgrade as `create`: v5 and the
        port-forward tunnel, both from Kubernetes 1.30)."""
        if transport == WEBSOCKET:
            return (
                (channels.WS_PORTFORWARD,)
                if self.kind == "portforward"
                else channels.WS_REMOTECOMMAND_TENANT
            )
        return (
            (channels.PORTFORWARD,) if self.kind == "portforward" else channels.SPDY_REMOTECOMMAND
        )

    # -- heads --------------------------------------------------------------------------

    def tenant_head(self, native: bytes, transport: str, websocket_key: bytes) -> bytes:
        """`native` (the rewrite step's head for the client's upgrade) turned into a
        `transport` upgrade request the gateway makes itself."""
        lines = native.split(b"\r\n")
        request_line = lines[0].split(b" ", 2)
        method = b"GET" if transport == WEBSOCKET else b"POST"
        out = [b" ".join((method, *request_line[1:]))]
        out += [line for line in lines[1:] if line and not line.lower().startswith(_UPGRADE_FIELDS)]
        offered = ", ".join(self.tenant_protocols(transport)).encode()
        if transport == WEBSOCKET:
            out += [
                b"Connection: Upgrade",
                b"Upgrade: websocket",
                b"Sec-WebSocket-Version: 13",
                b"Sec-WebSocket-Key: " + websocket_key,
                b"Sec-WebSocket-Protocol: " + offered,
            ]
        else:
            out += [
                b"Connection: Upgrade",
                b"Upgrade: SPDY/3.1",
                b"X-Stream-Protocol-Version: " + offered,
                b"Content-Length: 0",
            ]
        return b"\r\n".join(out) + b"\r\n\r\n"

    def client_switch(self, request_id: bytes) -> bytes:
        """The 101 the gateway answers the client with when it bridges."""
        protocol = self.client_protocol()
        assert protocol is not None
        if self.client == WEBSOCKET:
            fields = (
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
                + websocket.accept_key(self.websocket_key)
                + b"\r\nSec-WebSocket-Protocol: "
                + protocol.encode()
            )
        else:
            fields = (
                b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                b"X-Stream-Protocol-Version: " + protocol.encode()
            )
        return (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + fields
            + b"\r\nAudit-ID: "
            + request_id
            + b"\r\n\r\n"
        )


def accepted_protocol(
    transport: str,
    headers: list[tuple[bytes, bytes]],
    offered: tuple[str, ...],
    websocket_key: bytes,
) -> str:
    """The sub-protocol a tenant's 101 chose, after checking it is one the gateway offered
    (and, for WebSocket, that `Sec-WebSocket-Accept` answers the gateway's key); raises
    ValueError naming what is wrong."""
    fields = {name.lower(): value for name, value in headers}
    if transport == WEBSOCKET:
        if fields.get(b"sec-websocket-accept", b"").strip() != websocket.accept_key(websocket_key):
            raise ValueError("the tenant's WebSocket answer has a wrong Sec-WebSocket-Accept")
        chosen = fields.get(b"sec-websocket-protocol", b"").strip().decode("latin-1")
    else:
        chosen = fields.get(b"x-stream-protocol-version", b"").strip().decode("latin-1")
    if chosen not in offered:
        raise ValueError(f"the tenant chose sub-protocol {chosen[:64]!r}, not one of {offered}")
    return chosen
