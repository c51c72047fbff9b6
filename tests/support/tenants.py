"""Test API servers as a gateway's tenants: started, with the gateway's credential files."""

from __future__ import annotations

from pathlib import Path

from tests.fakekube import Caller, FakeKube
from tests.support.pki import TestCA

GATEWAY_CALLER = Caller(user="system:serviceaccount:vgate:gateway",
                        groups=("system:serviceaccounts",), may_impersonate=True)


def start_tenants(ca: TestCA, base: Path,
                  names: tuple[str, ...] = ("tenant1", "tenant2")) -> dict[str, FakeKube]:
    """One TLS `FakeKube` per name that lets the gateway impersonate; the gateway's token
    for each is in `base/<name>.token` (`tenant_entries` points the config at them)."""
    tenants: dict[str, FakeKube] = {}
    for name in names:
        token = f"gateway-credential-for-{name}"
        tenants[name] = FakeKube(name=name, tokens={token: GATEWAY_CALLER},
                                 tls=ca.issue(name, ["127.0.0.1"])).start()
        (base / f"{name}.token").write_text(token + "\n")
    return tenants


def tenant_entries(tenants: dict[str, FakeKube], ca: TestCA, base: Path) -> list[dict]:
    """The config's `tenants:` list for `start_tenants`' servers."""
    return [{"name": n, "upstream": f.url, "ca_file": str(ca.cert_file),
             "token_file": str(base / f"{n}.token")} for n, f in tenants.items()]
