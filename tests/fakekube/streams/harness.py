"""A throwaway HTTPS server for driving real kubectl at `serve_stream` (auth is ignored).

It answers the discovery requests and pod GETs kubectl makes before exec/attach/port-forward
and hands `/api/v1/namespaces/NS/pods/NAME/{exec,attach,portforward}` to `serve_stream`.
It is not the fake API server, only enough of one to test the streams package alone.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from .bytesource import close_writer
from .negotiate import Upgrade, negotiate
from .podfs import FilesystemRegistry
from .request import StreamRequest
from .serve import serve_stream

STREAM_KINDS = ("exec", "attach", "portforward")
STARTED = "2024-01-01T00:00:00Z"


@dataclass(frozen=True)
class Served:
    """One upgrade request the harness handed over, and the status serve_stream reported."""

    kind: str
    upgrade: str  # the request's Upgrade header: "websocket" or "SPDY/3.1"
    protocol: str  # the sub-protocol negotiated ("" when refused)
    status: int


def pod(namespace: str, name: str) -> dict[str, Any]:
    """A minimal Running pod with one container `app`."""
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": "1",
            "creationTimestamp": STARTED,
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "fake/app:1",
                    "stdin": True,
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                }
            ]
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": True,
                    "restartCount": 0,
                    "image": "fake/app:1",
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": STARTED}},
                }
            ],
        },
    }


def _resources() -> dict[str, Any]:
    verbs = ["get", "list"]
    pods = {
        "name": "pods",
        "singularName": "pod",
        "namespaced": True,
        "kind": "Pod",
        "verbs": verbs,
        "shortNames": ["po"],
    }
    subresources = [
        {
            "name": f"pods/{sub}",
            "singularName": "",
            "namespaced": True,
            "kind": "PodExecOptions" if sub == "exec" else "Pod",
            "verbs": ["create", "get"],
        }
        for sub in STREAM_KINDS
    ]
    return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [pods, *subresources]}


def _not_found(path: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"the server could not find the requested resource ({path})",
        "reason": "NotFound",
        "code": 404,
    }


def answer(path: str) -> tuple[int, dict[str, Any]]:
    """Status code and JSON body for a plain GET."""
    if path == "/api":
        return 200, {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
            ],
        }
    if path == "/apis":
        return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
    if path == "/api/v1":
        return 200, _resources()
    if path == "/version":
        return 200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fakekube"}
    parts = path.split("/")
    if len(parts) == 7 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods":
        return 200, pod(parts[4], parts[6])
    return 404, _not_found(path)


class Harness:
    """`async with Harness(cert, key) as h:` serves on `h.url` (127.0.0.1, random port)."""

    def __init__(self, cert_file: Path, key_file: Path, files: FilesystemRegistry) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.served: list[Served] = []
        self.stream_started = asyncio.Event()  # set when a request is handed to serve_stream
        self.errors: list[BaseException] = []  # anything unexpected a connection raised
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(cert_file, key_file)
        self._tls.set_alpn_protocols(["http/1.1"])
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> Harness:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def wait_idle(self, limit: float) -> bool:
        """True once every connection (and so every stream session) has finished."""
        async with asyncio.timeout(limit):
            while self._connections:
                await asyncio.wait(set(self._connections))
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await _read_request(conn, reader)) is not None:
                target = urlsplit(request.target.decode())
                path = unquote(target.path)
                self.requests.append((request.method.decode(), request.target.decode()))
                parts = path.split("/")
                if (
                    len(parts) == 8
                    and parts[1:4] == ["api", "v1", "namespaces"]
                    and (parts[5] == "pods" and parts[7] in STREAM_KINDS)
                ):
                    await self._stream(conn, request, parts, target.query, reader, writer)
                    return
                code, body = answer(path)
                _respond(conn, writer, code, body)
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, ssl.SSLError, OSError):
            pass
        except Exception as exc:  # recorded for the tests to assert on
            self.errors.append(exc)
        finally:
            await close_writer(writer)

    async def _stream(
        self,
        conn: h11.Connection,
        request: h11.Request,
        parts: list[str],
        query: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        headers = [(k.decode().lower(), v.decode()) for k, v in request.headers]
        req = StreamRequest(
            parts[7], parts[4], parts[6], parse_qsl(query, keep_blank_values=True), headers
        )
        self.stream_started.set()
        code = await serve_stream(req, reader, writer, conn.trailing_data[0], files=self.files)
        choice = negotiate(req)
        protocol = choice.protocol if isinstance(choice, Upgrade) else ""
        self.served.append(Served(req.kind, req.header("upgrade"), protocol, code))


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    """The next request head (its body, if any, is read and dropped); None at EOF."""
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _respond(
    conn: h11.Connection, writer: asyncio.StreamWriter, code: int, body: dict[str, Any]
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(payload))),
        ("audit-id", "00000000-0000-0000-0000-000000000000"),
    ]
    for event in (
        h11.Response(status_code=code, headers=headers),
        h11.Data(data=payload),
        h11.EndOfMessage(),
    ):
        writer.write(conn.send(event) or b"")
