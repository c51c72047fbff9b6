"""Distinguished names compared the way a directory does: case-insensitive, normalized."""

from __future__ import annotations

import re

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

# whitespace other than U+0020: the DN parser would strip it from the ends of a value like a
# space, making "CN=admins\u00a0" and "CN=admins" one group; written as hex escapes it is
# kept (and compared) as part of the value
_OTHER_SPACE = re.compile(r"[^\S ]")


def _escaped(match: re.Match[str]) -> str:
    return "".join(f"\\{b:02x}" for b in match.group().encode())


def normalize_dn(dn: str) -> str:
    """Lowercased attribute types and values, no spaces around separators, escapes kept.
    Only U+0020 is insignificant around separators (LDAP's rule); any other whitespace is
    part of the value, as a hex escape, so distinct groups never normalize alike.

    Raises ValueError for text that is not a DN.
    """
    if not dn or len(dn) > 4096 or "\x00" in dn:
        raise ValueError("not a DN")
    dn = _OTHER_SPACE.sub(_escaped, dn)
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except (LDAPInvalidDnError, IndexError, ValueError) as exc:
        raise ValueError(f"not a DN: {exc}") from None
    if not parts:
        raise ValueError("not a DN")
    out = []
    for attr, value, sep in parts:
        if not attr or not value:
            raise ValueError("not a DN: empty attribute or value")
        out.append(
            f"{attr.strip(' ').lower()}={value.strip(' ').lower()}{sep if sep == '+' else ','}"
        )
    return "".join(out).rstrip(",")


def is_dn(text: str) -> bool:
    try:
        normalize_dn(text)
    except ValueError:
        return False
    return True


def first_value(dn: str) -> str:
    """The value of the first RDN (`CN=team-a,OU=…` → `team-a`), as written."""
    try:
        return parse_dn(dn, escape=False, strip=True)[0][1]
    except (LDAPInvalidDnError, IndexError, ValueError):
        return dn
