"""LDAP search filter values, escaped per RFC 4515 (every value that reaches a filter)."""

from __future__ import annotations

_SPECIAL = {ord("\\"), ord("*"), ord("("), ord(")"), 0}


def escape_value(value: str | bytes) -> str:
    """Escape a filter assertion value: `\\ * ( )` and NUL become `\\xx`, and so does every
    byte outside printable ASCII (non-ASCII text is escaped as its UTF-8 bytes)."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    out = []
    for byte in raw:
        if byte in _SPECIAL or byte < 0x20 or byte > 0x7E:
            out.append(f"\\{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


def equals(attribute: str, value: str | bytes) -> str:
    """`(attribute=value)` with the value escaped. `attribute` is a fixed name, never input."""
    return f"({attribute}={escape_value(value)})"


def any_of(attribute: str, values: list[bytes] | list[str]) -> str:
    """`(|(a=v1)(a=v2)...)` with every value escaped."""
    return "(|" + "".join(equals(attribute, v) for v in values) + ")"
