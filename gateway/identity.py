"""The small immutable values every step of the request path shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.names import kube


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the caller is, as established by authentication (prefixes already applied)."""

    username: str
    uid: str
    groups: tuple[str, ...]
    issuer: str
    expires_at: float
    claims: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # the token names its groups elsewhere (Entra ID group overage): the directory must tell
    groups_overage: bool = False
    # a tenant-native token (e.g. a ServiceAccount's): the tenant whose TokenReview vouched
    # for it; such a request goes upstream with that token, never with impersonation
    reviewed_by: str | None = None


@dataclass(frozen=True, slots=True)
class Grant:
    """What the gateway will impersonate upstream for one (identity, tenant).

    Equal grants impersonate the same identity. The hash is computed once, so later steps
    may key per-grant work (the serialized impersonation headers) on the grant itself."""

    tenant: str
    user: str
    uid: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]
    reasons: tuple[str, ...] = ()
    directory_groups: tuple[tuple[str, str], ...] = ()  # (role, directory group) pairs
    dropped_groups: int = 0  # the user's groups left out by the tenant's `forward_groups`
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_hash",
            hash(
                (
                    self.tenant,
                    self.user,
                    self.uid,
                    self.groups,
                    self.roles,
                    self.extra,
                    self.reasons,
                    self.directory_groups,
                )
            ),
        )

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class Deny:
    """Why a caller may not use a tenant; `reason` is for the audit log, never the client."""

    tenant: str
    reason: str


@dataclass(frozen=True, slots=True)
class TooLarge(Deny):
    """The impersonation headers a grant needs exceed a configured cap (431); `message`
    names the limit, for the client."""

    message: str = ""


def usable_names(names: list[str], *, what: str = "name") -> list[str]:
    """`names` unchanged if each is a name the API server reads exactly as written (the
    gate in `gateway.names.kube`: non-empty, bounded, printable, no surrounding
    whitespace), listed once; else ValueError naming the first offender."""
    for name in names:
        why = kube.problem(name)
        if why is not None:
            raise ValueError(f"not a usable {what}: {name[:64]!r} {why}")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ValueError(f"listed twice: {', '.join(dups)}")
    return names
