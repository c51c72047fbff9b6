"""Request targets as the gateway records them (credential-bearing query parameters
redacted), and the JWTs a query carries (the pipeline refuses its own issuer's).

Some clients put a credential in the query (``?access_token=…`` is what OAuth 2.0 bearer
usage allows; also ``id_token``, ``client_secret``, ``code``, signed-URL signatures, …). The
target goes upstream byte for byte, but wherever the gateway writes it down (the audit log,
log lines, messages) the value of every parameter whose name marks a credential is
replaced by `REDACTED`. Names are compared percent-decoded and case-insensitively; the
rule is a class (any name containing token, secret, password, credential, signature,
session, auth, jwt, bearer, api key), not a list of examples.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

REDACTED = b"REDACTED"
# what a credential's parameter name (or a percent-encoded one) contains: only a query with
# one of these somewhere (in lowercase) is looked at closely
_SUSPECT = re.compile(rb"token|secret|pass|pwd|cred|sig|key|auth|session|jwt|bearer|code|%")
_CREDENTIAL = re.compile(
    r"token|secret|passw|credential|signature|session|auth|jwt|bearer|api_?key"
)
_CREDENTIAL_NAMES = frozenset({"code", "key", "sig", "pwd", "pass"})


def is_credential_name(name: bytes) -> bool:
    """Whether a query parameter called `name` (as sent, maybe percent-encoded) carries a
    credential."""
    text = unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace")
    text = text.strip().lower().replace("-", "_")
    return text in _CREDENTIAL_NAMES or _CREDENTIAL.search(text) is not None


def jwt_parameters(target: bytes) -> list[tuple[str, str]]:
    """(name, JWT) for every JWT-shaped string (a JOSE header, ``eyJ…``, and two more
    base64url parts) in the query of `target`: in a parameter's value, anywhere in it
    (``Bearer eyJ…``), or in its name (a bare ``?eyJ…``), percent-decoded. These are the
    candidates for a token that must not travel in the query. Empty, after two substring
    tests, for a query without one (what nearly every request has)."""
    start = target.find(b"?")
    if start < 0:
        return []
    query = target[start + 1 :]
    if b"eyJ" not in query and (b"%" not in query or b"eyJ" not in unquote_to_bytes(query)):
        return []
    found: list[tuple[str, str]] = []
    for part in re.split(rb"[&;]", query):
        name, _, value = part.partition(b"=")
        label = _decoded(name)
        for text in (_decoded(value), label):
            found.extend((label[:64], jwt.group()) for jwt in _JWT_SHAPED.finditer(text))
    return found


_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _decoded(piece: bytes) -> str:
    return unquote_to_bytes(piece.replace(b"+", b" ")).decode("utf-8", "replace")


def redacted(target: bytes) -> bytes:
    """`target` with the value of every credential-bearing query parameter replaced."""
    start = target.find(b"?")
    if start < 0 or _SUSPECT.search(target.lower(), start) is None:
        return target
    path, query = target[:start], target[start + 1 :]
    parts = re.split(rb"([&;])", query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition(b"=")
        if eq and is_credential_name(name):
            parts[i] = name + b"=" + REDACTED
    return path + b"?" + b"".join(parts)
