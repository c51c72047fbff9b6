"""Step 3 of the request path: Active Directory groups over LDAP, cached per user."""

from gateway.directory.entry import DirectoryGroup, Membership
from gateway.directory.errors import DirectoryError, DirectoryRefused, DirectoryUnavailable
from gateway.directory.service import Directory, lookup_value

__all__ = [
    "Directory",
    "DirectoryError",
    "DirectoryGroup",
    "DirectoryRefused",
    "DirectoryUnavailable",
    "Membership",
    "lookup_value",
]
