"""Request/response values passed between the connection layer and the API handlers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

JSON = "application/json"


@dataclass
class Request:
    method: str
    target: bytes
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    path: str = ""
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower-cased

    @classmethod
    def build(
        cls, method: str, target: bytes, raw_headers: list[tuple[bytes, bytes]], body: bytes = b""
    ) -> Request:
        parts = urlsplit(target.decode("latin-1"))
        return cls(
            method=method,
            target=target,
            raw_headers=raw_headers,
            body=body,
            path=unquote(parts.path),
            query=parse_qsl(parts.query, keep_blank_values=True),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw_headers],
        )

    def param(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return default

    def flag(self, name: str) -> bool:
        """A boolean query parameter as Go's strconv.ParseBool reads it."""
        return (self.param(name) or "").lower() in ("1", "t", "true")

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Stream:
    """A chunked response whose body is produced while the client stays connected."""

    status: int
    content_type: str
    chunks: AsyncIterator[bytes]
    headers: list[tuple[str, str]] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None  # called however the stream ends


@dataclass
class Upgrade:
    """Hand the connection to the streams package (exec/attach/portforward)."""

    kind: str
    namespace: str
    pod: str


def json_response(
    obj: Any,
    status: int = 200,
    content_type: str = JSON,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    return Response(
        status, json.dumps(obj, separators=(",", ":")).encode() + b"\n", content_type, headers or []
    )
