"""The one gate every name passes before it may be impersonated at a tenant's API server.

A name travels as an HTTP header value (`Impersonate-User`, `-Uid`, `-Group`,
`-Extra-<key>`), and kube-apiserver decides who a request runs as from the value *as Go
parses it*, then compares it byte for byte (RBAC subjects, `system:` identities — case
sensitive). Go's header parsing (net/textproto, Go 1.21 in kube-apiserver 1.28):

- trims leading and trailing ``' '`` and ``'\\t'`` from every value;
- joins obs-fold continuation lines with one space; rejects other control bytes (400);
- passes bytes 0x80-0xFF through unchanged (no UTF-8 check, no Unicode normalisation).

So ``"alice@example.com "`` would run as ``alice@example.com``, and ``" system:x"`` as the
control-plane identity ``system:x``. The gate decides every name exactly as the far side
will read it, by refusing anything Go would transform or could misread, instead of
trimming it (a trimmed name is another person's name):

- empty, or longer than `MAX_NAME_BYTES` once UTF-8 encoded, or not encodable at all
  (a lone surrogate from a JSON ``\\ud800`` escape);
- not printable: every control character (NUL, CR, LF, TAB, DEL, C1), every Unicode space
  but U+0020 (NBSP, U+2000-U+200A, U+3000, line/paragraph separators), format
  characters (zero-width space and joiners, BOM, bidi overrides), private-use and
  unassigned code points;
- U+0020 at either end (the one whitespace left after the rule above);
- for users and groups: the reserved ``system:`` prefix, in any letter case (kube-apiserver
  only honours the lowercase one; refusing every spelling keeps look-alikes out of the
  tenant's audit log too).

Extra keys travel in the header *name*: the API server lowercases it and percent-decodes
the key, so a key must already be lowercase (the gateway percent-encodes the rest).

`check` raises `UnsafeName`; callers map it to their own error. Callers apply it where a
name is made (token claims, directory groups) and once more where the impersonation
headers are serialized (`gateway.rewrite`), both cached per identity / grant, never per
request.
"""

from __future__ import annotations

from typing import Literal

MAX_NAME_BYTES = 1024
RESERVED_PREFIX = "system:"

Kind = Literal["user", "group", "uid", "extra key", "extra value", "name"]
_RESERVABLE = frozenset({"user", "group"})


class UnsafeName(ValueError):
    """A name that kube-apiserver would not read exactly as written; `reserved` when it is
    (a spelling of) a `system:` identity."""

    def __init__(self, kind: str, name: str, why: str, *, reserved: bool = False) -> None:
        super().__init__(f"{kind} {name[:64]!r} {why}")
        self.kind = kind
        self.reserved = reserved


def problem(name: object, kind: Kind = "name") -> str | None:
    """Why `name` may not be impersonated as a `kind`, or None when it may."""
    if not isinstance(name, str) or not name:
        return "is empty or not a string"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode (lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    if not name.isprintable():
        return "has control, format or non-ASCII space characters"
    if name[0] == " " or name[-1] == " ":
        return "has surrounding whitespace (the API server would trim it)"
    if kind == "extra key" and name != name.lower():
        return "has upper-case letters (the API server lowercases extra keys)"
    return None


def is_reserved(name: str) -> bool:
    """A spelling of the reserved `system:` prefix, in any case."""
    return name[: len(RESERVED_PREFIX)].casefold() == RESERVED_PREFIX


def check(name: object, kind: Kind = "name", *, allow_reserved: bool = False) -> str:
    """`name` itself when kube-apiserver reads it exactly as written (and, for a user or
    group, it is not a `system:` identity unless `allow_reserved`); `UnsafeName`
    otherwise."""
    why = problem(name, kind)
    if why is not None:
        raise UnsafeName(kind, name if isinstance(name, str) else repr(name), why)
    assert isinstance(name, str)
    if not allow_reserved and kind in _RESERVABLE and is_reserved(name):
        raise UnsafeName(kind, name, f"uses the reserved {RESERVED_PREFIX!r} prefix", reserved=True)
    return name


def is_safe(name: object, kind: Kind = "name") -> bool:
    try:
        check(name, kind)
    except UnsafeName:
        return False
    return True
