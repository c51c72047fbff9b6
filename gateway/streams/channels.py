"""The Kubernetes remote-command and port-forward protocols on top of the transports.

Over WebSocket (`v4`/`v5.channel.k8s.io`) every message starts with a channel byte: 0 stdin,
1 stdout, 2 stderr, 3 the error channel (a `Status` in JSON when the command ended), 4
terminal resize (JSON `{"Width": W, "Height": H}`); v5 adds 255 "close" (payload: the channel
the client will write no more to, so stdin can end). Over SPDY each of them is a stream the
client opens, named by its `streamtype` header. `base64.channel.k8s.io` variants carry the
channel as an ASCII digit and the payload in base64 (browsers). Port-forward over WebSocket
(`SPDY/3.1+portforward.k8s.io`, kubectl >= 1.31) carries a whole SPDY session in binary
messages; over SPDY it is `portforward.k8s.io` with a data and an error stream per port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
PORTFORWARD = "portforward.k8s.io"
WS_PORTFORWARD = "SPDY/3.1+portforward.k8s.io"
#: what the gateway translates for a client, best first
WS_REMOTECOMMAND = (V5, V4)
SPDY_REMOTECOMMAND = (V4,)  # v5 over SPDY is framed as v4; the kubelet speaks v4
#: what the gateway offers a tenant over WebSocket: only v5, which API servers take from
#: 1.30 on, when they also authorize a WebSocket exec/attach as `create` (before, a GET
#: upgrade needed only `get` on pods/exec: bridging a SPDY client's POST there would turn
#: the `create` the client was checked for into a `get`)
WS_REMOTECOMMAND_TENANT = (V5,)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
STREAM_TYPES = {
    "stdin": STDIN,
    "stdout": STDOUT,
    "stderr": STDERR,
    "error": ERROR,
    "resize": RESIZE,
}
MAX_STATUS_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How the command ended, from the error channel: `code` None when it did not say."""

    code: int | None
    message: str = ""


def exit_status(payload: bytes) -> ExitStatus:
    """Read the error channel's content: a `Status` (v4 and later) or plain text (older).
    Success is 0; `NonZeroExitCode` carries the code in `details.causes[ExitCode]`."""
    text = payload.decode("utf-8", "replace").strip()
    if not text:
        return ExitStatus(None, "no status")
    try:
        status = json.loads(text)
    except ValueError:
        return ExitStatus(None, text[:500])
    if not isinstance(status, dict):
        return ExitStatus(None, text[:500])
    if status.get("status") == "Success":
        return ExitStatus(0)
    message = str(status.get("message") or "")[:500]
    if status.get("reason") == "NonZeroExitCode":
        causes = (status.get("details") or {}).get("causes") or []
        for cause in causes:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    return ExitStatus(int(cause.get("message", "")), message)
                except ValueError:
                    break
    return ExitStatus(None, message or text[:500])


class ResizeReader:
    """Terminal sizes from a resize channel: JSON objects, possibly split or joined across
    messages (a partial object waits for more, bounded)."""

    MAX_PENDING = 4096

    def __init__(self) -> None:
        self._pending = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        text = self._pending + data.decode("utf-8", "replace")
        sizes: list[tuple[int, int]] = []
        while True:
            text = text.lstrip()
            if not text:
                break
            try:
                size, end = self._decoder.raw_decode(text)
            except ValueError:
                break
            text = text[end:]
            if isinstance(size, dict):
                try:
                    width, height = int(size.get("Width", 0)), int(size.get("Height", 0))
                except (TypeError, ValueError):
                    continue
                if 0 < width < 65536 and 0 < height < 65536:
                    sizes.append((width, height))
        self._pending = text[-self.MAX_PENDING :] if text else ""
        return sizes
