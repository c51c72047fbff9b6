"""The tenants behind a test gateway.

Real ones: one etcd and one kube-apiserver per tenant (`tests/support/kube.py`), started once
per test session and shared by every gateway the tests start. In each, the role groups
`vgate:<role>` are bound, the gateway's credential is a ServiceAccount that may only
impersonate (`impersonator_token`), and a Pod `web-0` exists (it never runs: there is no
kubelet). The stand-in (`tests/fakekube`) is for what needs a kubelet (exec, attach, cp,
port-forward, `logs -f`): a world routes one tenant, `STANDIN`, to it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fakekube import Caller, FakeKube
from tests.support.kube import (
    ApiServer,
    Etcd,
    impersonator,
    require_kube,
    role_bindings,
    start_all,
)
from tests.support.pki import TestCA

REAL = ("tenant1", "tenant2")
STANDIN = "standin"
GATEWAY_SERVICE_ACCOUNT = "system:serviceaccount:default:vgate"
STANDIN_CALLER = Caller(
    user=GATEWAY_SERVICE_ACCOUNT, groups=("system:serviceaccounts",), may_impersonate=True
)

SEED = """apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: default}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec:
  automountServiceAccountToken: false
  containers: [{name: web, image: registry.example/web:1}]
"""


class RealTenants:
    """One etcd and one API server per name under `workdir`, each set up for a gateway:
    role groups bound, the seed applied, and `credential(api)` (by default a ServiceAccount
    `vgate` that may only impersonate) minting the gateway's token, kept in `tokens`."""

    def __init__(
        self,
        workdir: Path,
        names: tuple[str, ...] = REAL,
        *,
        credential: Callable[[ApiServer], str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.etcd = Etcd(workdir / "etcd")
        self.servers = {n: ApiServer(workdir / n, self.etcd, name=n) for n in names}
        self.credential = credential
        self.tokens: dict[str, str] = {}

    def start(self) -> RealTenants:
        self.etcd.start()
        try:
            start_all(list(self.servers.values()))
            threads = [threading.Thread(target=self._prepare, args=(n,)) for n in self.servers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            missing = [n for n in self.servers if n not in self.tokens]
            if missing:
                raise RuntimeError(f"could not prepare tenants {missing}; see {self.workdir}")
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self, name: str) -> None:
        api = self.servers[name]
        if self.credential is None:  # one apply: every kubectl run costs a few 100 ms
            api.apply("---\n".join((role_bindings(), SEED, impersonator())))
            self.tokens[name] = api.token("vgate")
        else:
            api.apply("---\n".join((role_bindings(), SEED)))
            self.tokens[name] = self.credential(api)

    def stop(self) -> None:
        for api in self.servers.values():
            api.stop()
        self.etcd.stop()

    def __enter__(self) -> RealTenants:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_shared: RealTenants | None = None
_lock = threading.Lock()


def real_tenants() -> RealTenants:
    """The session's real tenants, started on first use (skips, or fails under
    VGATE_REQUIRE_E2E=1, without the binaries) and stopped when the session ends."""
    global _shared
    require_kube(kubectl=True)
    with _lock:
        if _shared is None:
            workdir = Path(tempfile.mkdtemp(prefix="vgate-tenants-"))
            _shared = RealTenants(workdir).start()
            atexit.register(stop_real_tenants)
        return _shared


def stop_real_tenants() -> None:
    global _shared
    with _lock:
        if _shared is not None:
            _shared.stop()
            shutil.rmtree(_shared.workdir, ignore_errors=True)
            _shared = None


def start_standin(ca: TestCA, base: Path, name: str = STANDIN, **options: Any) -> FakeKube:
    """The stand-in tenant (TLS with a leaf of `ca`); the gateway's token is in
    `base/<name>.token`; `options` go to `FakeKube` (e.g. `stream_transports`)."""
    token = f"gateway-credential-for-{name}"
    (base / f"{name}.token").write_text(token + "\n")
    return FakeKube(
        name=name, tokens={token: STANDIN_CALLER}, tls=ca.issue(name, ["127.0.0.1"]), **options
    ).start()


def tenant_entries(
    real: RealTenants, base: Path, *, standin: FakeKube | None = None, ca: TestCA | None = None
) -> list[dict]:
    """The config's `tenants:` list: every real tenant (its token written to
    `base/<name>.token`) and the stand-in, if given (`ca` signed its certificate)."""
    entries = []
    for name, api in real.servers.items():
        token_file = base / f"{name}.token"
        token_file.write_text(real.tokens[name] + "\n")
        entries.append(
            {
                "name": name,
                "upstream": api.url,
                "ca_file": str(api.ca_file),
                "token_file": str(token_file),
            }
        )
    if standin is not None:
        assert ca is not None, "the stand-in's certificate is signed by the world's CA"
        entries.append(
            {
                "name": standin.name,
                "upstream": standin.url,
                "ca_file": str(ca.cert_file),
                "token_file": str(base / f"{standin.name}.token"),
            }
        )
    return entries
