"""Who is really calling when vgate sits behind the shared ingress: `X-Forwarded-For`.

The client's `X-Forwarded-For` is believed only as far as a chain of configured trusted
proxies vouches for it: starting from the TCP peer, each hop is taken while it is a trusted
proxy; the first address that is not is the client. Anything further left could have been
written by the client and is dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

MAX_HOPS = 32

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in one hop (ports dropped), as the audit line records it: an
    IPv4-mapped IPv6 address (what a dual-stack proxy writes for an IPv4 client) is that
    IPv4 address, and an IPv6 zone (`%eth0`, only meaningful on the proxy's own link, any
    length) is dropped; None when the hop is no address."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0] if ":" in text else text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class ClientAddress:
    """Resolves the client address and the `X-Forwarded-For` chain to send upstream."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies
        )

    def _is_trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def is_trusted_peer(self, peer: str) -> bool:
        """Whether the TCP peer `peer` is one of the trusted proxies."""
        if not self.trusted:
            return False
        address = _address(peer)
        return address is not None and self._is_trusted(address)

    def resolve(self, peer: str, forwarded_for: list[bytes]) -> tuple[str, bytes]:
        """(client address, `X-Forwarded-For` value for upstream) for one request."""
        peer_address = _address(peer)
        if peer_address is None or not self.trusted or not self._is_trusted(peer_address):
            return peer, peer.encode()
        hops = [
            h for value in forwarded_for for h in value.decode("latin-1").split(",") if h.strip()
        ]
        chain = [peer]
        for hop in reversed(hops[-MAX_HOPS:]):
            address = _address(hop)
            if address is None:
                break  # garbage in the header: stop believing it here
            chain.append(str(address))
            if not self._is_trusted(address):
                break
        chain.reverse()
        return chain[0], ", ".join(chain).encode()
