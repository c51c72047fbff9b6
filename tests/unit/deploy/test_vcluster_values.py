"""deploy/vcluster/values.yaml: the base of every tenant's vcluster keeps the API private to the
gateway, uses the k8s distro, syncs ingresses and isolates tenants."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.deploy.chart import REPO
from tests.support.deploy.values_docs import undocumented_keys

VALUES = REPO / "deploy" / "vcluster" / "values.yaml"


def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def test_every_setting_is_documented() -> None:
    assert undocumented_keys(VALUES.read_text(), leaves_only=True) == []


def test_api_is_reachable_only_through_the_gateway() -> None:
    cp = _values()["controlPlane"]
    assert cp["service"]["spec"]["type"] == "ClusterIP"
    assert cp["ingress"]["enabled"] is False
    assert "httpsNodePort" not in cp["service"] and "kubeletNodePort" not in cp["service"]
    # SANs are per tenant (added by the lifecycle manager), never public names here.
    assert cp["proxy"]["extraSANs"] == []


def test_k8s_distro_only() -> None:
    distro = _values()["controlPlane"]["distro"]
    assert distro == {"k8s": {"enabled": True}}


def test_ingress_sync_and_isolation() -> None:
    v = _values()
    assert v["sync"]["toHost"]["ingresses"]["enabled"] is True
    assert v["sync"]["fromHost"]["nodes"]["enabled"] is False
    assert v["policies"]["networkPolicy"]["enabled"] is True
    assert v["rbac"]["clusterRole"]["enabled"] is False
    for kind in ("persistentVolumes", "storageClasses", "priorityClasses", "serviceAccounts"):
        assert v["sync"]["toHost"][kind]["enabled"] is False, kind
