"""Distinguished names compared the way a directory does (RFC 4514): parsed, escapes decoded,
then written back in one canonical form, lowercased.

Two spellings of one DN normalize alike: `\\,` and `\\2C`, `\\ ` and `\\20`, `café` and
`caf\\C3\\A9`, `CN=a+SN=b` and `SN=b+CN=a`, spaces around separators. Two different DNs
never do: an escaped leading or trailing space, a leading `#`, and any whitespace other
than U+0020 are part of the value.

Not ldap3's `parse_dn`: it refuses a value ending in an escaped space (`CN=a\\ ,…`, which AD
writes for a group named with a trailing space) and leaves escapes undecoded, so two
spellings of one group would compare unequal.
"""

from __future__ import annotations

import re

MAX_DN_CHARS = 4096

# RFC 4514: an attribute type is a descriptor (keystring) or a numeric OID
_TYPE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)\Z")
_HEX = frozenset("0123456789abcdefABCDEF")
# characters a backslash may escape as themselves (RFC 4514 `escaped` / `special`)
_ESCAPABLE = frozenset('"+,;<>\\ #=')
# what the canonical form escapes anywhere in a value; a leading space or `#` and a trailing
# space are escaped too (RFC 4514, section 2.4)
_SPECIAL = frozenset('"+,;<>\\=')
_PLAIN = re.compile(r'[^,;+\\"<>\x00]+')  # value characters that end nothing and escape nothing
_NEEDS_ESCAPE = re.compile(r'["+,;<>\\=]|^[ #]| $')


class _Value:
    """A value's bytes as they are decoded, with the length up to its last significant
    character (unescaped trailing spaces are not)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.significant = 0

    def add(self, raw: bytes, *, escaped: bool) -> None:
        self.data += raw
        if escaped or raw != b" ":
            self.significant = len(self.data)

    def add_plain(self, run: str) -> None:
        """Unescaped characters: their trailing spaces are significant only once something
        follows them."""
        kept = run.rstrip(" ")
        if kept:
            self.significant = len(self.data) + len(kept.encode())
        self.data += run.encode()

    def text(self) -> str:
        try:
            return bytes(self.data[: self.significant]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not a DN: a value is not UTF-8") from None


def parse_dn(dn: str) -> list[list[tuple[str, str, bool]]]:
    """The RDNs of `dn`, each a list of (attribute type lowercased, decoded value, whether
    the value was written in hex form); a hex-form value (`#04…`, BER) is kept as `#` + its
    hex digits, lowercased.

    Raises ValueError for text that is not a DN (RFC 4514, with the usual leniency for
    spaces around separators, `;` as a separator and the unescaped `=` AD writes).
    """
    if not dn or len(dn) > MAX_DN_CHARS:
        raise ValueError("not a DN")
    rdns: list[list[tuple[str, str, bool]]] = []
    rdn: list[tuple[str, str, bool]] = []
    i, n = 0, len(dn)
    while True:
        eq = dn.find("=", i)
        if eq < 0:
            raise ValueError("not a DN: an attribute without '='")
        kind = dn[i:eq].strip(" ")
        if not _TYPE.match(kind):
            raise ValueError(f"not a DN: bad attribute type {kind[:40]!r}")
        i = eq + 1
        while i < n and dn[i] == " ":
            i += 1
        hex_form = i < n and dn[i] == "#"
        value, i = _read_value(dn, i)
        rdn.append((kind.lower(), value, hex_form))
        if i >= n:
            rdns.append(rdn)
            return rdns
        sep = dn[i]
        i += 1
        if sep in ",;":
            rdns.append(rdn)
            rdn = []


def _read_value(dn: str, i: int) -> tuple[str, int]:
    """The value starting at `dn[i]` and the index of the separator that ends it (or len)."""
    n = len(dn)
    if i < n and dn[i] == "#":
        end = i + 1
        while end < n and dn[end] in _HEX:
            end += 1
        digits = dn[i + 1 : end]
        rest = end
        while rest < n and dn[rest] == " ":
            rest += 1
        if not digits or len(digits) % 2 or (rest < n and dn[rest] not in ",;+"):
            raise ValueError("not a DN: a bad hex value")
        return "#" + digits.lower(), rest
    value = _Value()
    while i < n:
        plain = _PLAIN.match(dn, i)
        if plain is not None:
            value.add_plain(plain.group())
            i = plain.end()
            continue
        c = dn[i]
        if c in ",;+":
            break
        if c == "\\":
            if i + 1 >= n:
                raise ValueError("not a DN: a lone backslash at the end")
            nxt = dn[i + 1]
            if nxt in _HEX and i + 2 < n and dn[i + 2] in _HEX:
                value.add(bytes([int(dn[i + 1 : i + 3], 16)]), escaped=True)
                i += 3
                continue
            if nxt not in _ESCAPABLE:
                raise ValueError(f"not a DN: a bad escape {dn[i : i + 2]!r}")
            value.add(nxt.encode(), escaped=True)
            i += 2
            continue
        if c in '"<>' or c == "\x00":
            raise ValueError(f"not a DN: {c!r} must be escaped")
    text = value.text()
    if not text:
        raise ValueError("not a DN: an empty value")
    if "\x00" in text:
        raise ValueError("not a DN: a NUL in a value")
    return text, i


def _escape(value: str) -> str:
    """`value` in the canonical escaped form: RFC 4514's specials as `\\c`, a leading space
    or `#` and a trailing space as `\\ ` / `\\#`, whitespace other than U+0020 and control
    characters as hex escapes of their UTF-8 bytes (visible, and distinct from a space)."""
    if value.isprintable() and not _NEEDS_ESCAPE.search(value):
        return value  # the common case: nothing to escape
    out = []
    last = len(value) - 1
    for k, c in enumerate(value):
        if c in _SPECIAL or (c == " " and k in (0, last)) or (c == "#" and k == 0):
            out.append("\\" + c)
        elif c != " " and (c.isspace() or not c.isprintable()):
            out.append("".join(f"\\{b:02x}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def normalize_dn(dn: str) -> str:
    """`dn` in one canonical form: lowercased attribute types and values, escapes decoded and
    written back the one canonical way, no spaces around separators, the attributes of a
    multi-valued RDN sorted. Only unescaped U+0020 is insignificant around separators
    (LDAP's rule); an escaped space and any other whitespace are part of the value.

    Raises ValueError for text that is not a DN.
    """
    out = []
    for rdn in parse_dn(dn):
        avas = sorted(
            f"{kind}={value if hex_form else _escape(value.lower())}"
            for kind, value, hex_form in rdn
        )
        out.append("+".join(avas))
    return ",".join(out)


def is_dn(text: str) -> bool:
    try:
        normalize_dn(text)
    except ValueError:
        return False
    return True


def first_value(dn: str) -> str:
    """The decoded value of the first RDN (`CN=team-a,OU=…` → `team-a`, `CN=a\\,b` → `a,b`);
    `dn` itself when it is not a DN."""
    try:
        return parse_dn(dn)[0][0][1]
    except ValueError:
        return dn
