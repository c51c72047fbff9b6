"""Kubernetes `Status` error bodies, the shape every API client understands."""

from __future__ import annotations

import json

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    431: "BadRequest",
    500: "InternalError",
    502: "ServiceUnavailable",
    503: "ServiceUnavailable",
    504: "Timeout",
}

PHRASES = {
    100: "Continue",
    101: "Switching Protocols",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    417: "Expectation Failed",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

_status_lines: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <code> <phrase>\\r\\n`` (built once per code)."""
    line = _status_lines.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %b\r\n" % (status, PHRASES.get(status, "Unknown").encode())
        if 100 <= status <= 999:
            _status_lines[status] = line
    return line


def status_body(
    code: int, message: str, reason: str | None = None, details: dict | None = None
) -> bytes:
    """Serialize a `metav1.Status` failure with the given HTTP code and message (and
    `details`, e.g. ``{"retryAfterSeconds": 1}``, which client-go reads)."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        status["details"] = details
    return json.dumps(status, separators=(",", ":")).encode()
