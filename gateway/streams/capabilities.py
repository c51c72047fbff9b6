"""Which upgrade each tenant accepts, learnt from its answers (per worker process).

Nothing is probed: a client's upgrade goes to the tenant as the client sent it, and only
when the tenant (or something in front of it) refuses it with a non-101 answer does the
gateway try the other upgrade, bridging the two. When that works, the refusal is
remembered for the tenant and the protocol family (exec/attach, port-forward: an API
server may take WebSocket for one and not the other), and the next client of that kind
is bridged at once. A bridged attempt that is refused is re-checked the same way (the
client's own upgrade is tried again), so an upgraded tenant is noticed on its first
refusal. A route change forgets the tenant.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.streams.upgrade import other


class TenantProtocols:
    """(tenant, family) → the upgrade that tenant refused while the other one worked."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._refused: OrderedDict[tuple[str, str], str] = OrderedDict()

    def first(self, tenant: str, family: str, client: str) -> str:
        """The upgrade to try first for a client speaking `client`."""
        refused = self._refused.get((tenant, family))
        return other(client) if refused == client else client

    def learnt(self, tenant: str, family: str, worked: str, *, after_refusal: bool) -> None:
        """`worked` got a 101; `after_refusal`: the other upgrade was refused just before."""
        key = (tenant, family)
        if after_refusal:
            self._refused[key] = other(worked)
            self._refused.move_to_end(key)
            while len(self._refused) > self.max_entries:
                self._refused.popitem(last=False)
        elif self._refused.get(key) == worked:
            del self._refused[key]

    def refuses(self, tenant: str, family: str) -> str | None:
        """The upgrade this tenant is known to refuse, if any."""
        return self._refused.get((tenant, family))

    def forget(self, tenant: str) -> None:
        for key in [k for k in self._refused if k[0] == tenant]:
            del self._refused[key]
