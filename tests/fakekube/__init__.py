"""A kube-apiserver stand-in, only for what the real one cannot do in tests.

The tests' tenants are real kube-apiservers (`tests/support/kube.py`): authentication, RBAC,
impersonation, access reviews, TokenRequest, CRDs, Leases, server-side apply, watch,
discovery, Table and protobuf output and `Status` errors are tested against them. This
stand-in remains for what needs a kubelet — exec, attach, cp, port-forward and `logs -f`
(no pod ever runs behind the real API server here) — and to record the exact request heads
a gateway sends or to inject a fault. Until they move to real API servers, the lifecycle
tests and the load harness also use its object store, watch, patch/apply and static RBAC.

    kube = FakeKube(tokens={"t0": Caller("admin", ("vgate:cluster-admin",))}, tls=leaf).start()
    ... kube.url, kube.records, kube.active_watches ...
    kube.stop()
"""

from .model import ApiError, Caller, EffectiveUser, Record
from .rbac import RULES, Attributes, Rule
from .server import FakeKube

__all__ = [
    "RULES",
    "ApiError",
    "Attributes",
    "Caller",
    "EffectiveUser",
    "FakeKube",
    "Record",
    "Rule",
]
