"""A kube-apiserver stand-in for tests: real HTTP semantics, in-memory objects, static RBAC.

    kube = FakeKube(tokens={"t0": Caller("admin", ("vgate:cluster-admin",))}, tls=leaf).start()
    ... kube.url, kube.records, kube.active_watches ...
    kube.stop()
"""

from .model import ApiError, Caller, EffectiveUser, Record
from .rbac import RULES, Attributes, Rule
from .server import TEST_WARNINGS, FakeKube

__all__ = [
    "RULES",
    "TEST_WARNINGS",
    "ApiError",
    "Attributes",
    "Caller",
    "EffectiveUser",
    "FakeKube",
    "Record",
    "Rule",
]
