"""metav1.Status bodies: the error-channel verdict and HTTP refusals."""

from __future__ import annotations

import json
from typing import Any

from tests.fakekube.model import status_body


def success() -> dict[str, Any]:
    """What the kubelet writes on the error channel when the command exited 0."""
    return {"metadata": {}, "status": "Success"}


def exit_code(code: int, argv: list[str] | None) -> dict[str, Any]:
    """Success for 0, else Failure/NonZeroExitCode carrying the code kubectl exits with."""
    if code == 0:
        return success()
    shown = " ".join(argv) if argv else "attach"
    return {
        "metadata": {},
        "status": "Failure",
        "message": (
            f"command terminated with non-zero exit code: error executing command "
            f"[{shown}], exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def failure(code: int, reason: str, message: str) -> dict[str, Any]:
    """A full Status object as the API server sends in an HTTP error response."""
    return status_body(code, reason, message)


def encode(status: dict[str, Any]) -> bytes:
    """Compact JSON, as the API server writes it."""
    return json.dumps(status, separators=(",", ":")).encode()
