"""Windows security identifiers: the binary `objectSid` form and the `S-1-5-21-…` string."""

from __future__ import annotations

import re
import struct

SID_PATTERN = re.compile(r"^S-1-(\d{1,13})(-\d{1,10}){1,15}$")


class SidError(ValueError):
    pass


def sid_to_str(raw: bytes) -> str:
    """Binary SID (revision, count, 48-bit big-endian authority, little-endian sub-auths)."""
    if len(raw) < 8 or raw[0] != 1:
        raise SidError("not a revision-1 SID")
    count = raw[1]
    if count > 15 or len(raw) != 8 + 4 * count:
        raise SidError("SID length does not match its sub-authority count")
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack("<" + "I" * count, raw[8:])
    return "S-1-" + "-".join(str(v) for v in (authority, *subs))


def sid_to_bytes(text: str) -> bytes:
    """The binary form of an `S-1-…` string (for filters on `objectSid`)."""
    if not is_sid(text):
        raise SidError(f"not a SID: {text[:64]!r}")
    parts = text.split("-")
    authority = int(parts[2])
    subs = [int(p) for p in parts[3:]]
    if authority >= 1 << 48 or any(s >= 1 << 32 for s in subs):
        raise SidError(f"SID component out of range: {text[:64]!r}")
    return (
        bytes([1, len(subs)])
        + authority.to_bytes(6, "big")
        + struct.pack("<" + "I" * len(subs), *subs)
    )


def is_sid(text: str) -> bool:
    """True for a well-formed `S-1-…` string whose numbers fit their fields."""
    if not SID_PATTERN.fullmatch(text):
        return False
    parts = text.split("-")
    return int(parts[2]) < 1 << 48 and all(int(p) < 1 << 32 for p in parts[3:])


def domain_sid(user_sid: str) -> str:
    """The domain part of an account SID (everything but the last RID)."""
    return user_sid.rsplit("-", 1)[0]
