"""One chart for every Kubernetes it supports (Chart.yaml kubeVersion: 1.28 and newer): each
variant renders for 1.28, 1.29, 1.30 and the newest Kubernetes helm knows, passes that
version's schemas, and the renders differ only where the chart uses something newer than 1.28
(the preStop sleep action and ValidatingAdmissionPolicy v1, both 1.30)."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from tests.support.deploy import schemas
from tests.support.deploy.chart import (
    ADMISSION_POLICY_BETA,
    NAMESPACE,
    RELEASE,
    KubeTarget,
    Rendered,
    RenderError,
    helm_kube_version,
    render,
)
from tests.support.deploy.variants import VARIANTS

# The 1.28/1.29 clusters serve ValidatingAdmissionPolicy v1beta1 (the lifecycle variants need
# it); a cluster without it is refused further down.
VERSIONS = ("1.28", "1.29", "1.30", "newest")
LIFECYCLE = sorted(v for v, values in VARIANTS.items() if values.get("lifecycle"))
POLICY = f"{RELEASE}-lifecycle-tenant-namespaces"
PRE_STOP = "spec.template.spec.containers.0.lifecycle.preStop"


@pytest.fixture(scope="module")
def targets(helm: str) -> dict[str, KubeTarget]:
    return {
        "1.28": KubeTarget("1.28.0", ADMISSION_POLICY_BETA),
        "1.29": KubeTarget("1.29.0", ADMISSION_POLICY_BETA),
        "1.30": KubeTarget("1.30.0"),
        "newest": KubeTarget(helm_kube_version(helm)),
    }


@pytest.fixture(scope="module")
def rendered(helm: str, targets: dict[str, KubeTarget]) -> Any:
    @cache
    def rendered_for(version: str, variant: str) -> Rendered:
        return render(helm, VARIANTS[variant], target=targets[version])

    return rendered_for


def test_newest_is_newer_than_the_gated_versions(targets: dict[str, KubeTarget]) -> None:
    major, minor = (int(p) for p in targets["newest"].version.split(".")[:2])
    assert (major, minor) > (1, 30)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_passes_the_schema_of_its_version(
    rendered: Any, targets: dict[str, KubeTarget], version: str, variant: str
) -> None:
    out = rendered(version, variant)
    assert out.objects, "nothing rendered"
    how = {(o["kind"], schemas.validate(o, targets[version].version)) for o in out.objects}
    assert ("Deployment", "openapi") in how
    for obj in out.objects:
        assert obj["metadata"]["name"].startswith(RELEASE)
        if obj["kind"] not in (
            "ClusterRole",
            "ClusterRoleBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def _leaves(node: Any, path: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {
            k: v
            for key, child in node.items()
            for k, v in _leaves(child, f"{path}.{key}" if path else key).items()
        }
    if isinstance(node, list):
        return {
            k: v for i, child in enumerate(node) for k, v in _leaves(child, f"{path}.{i}").items()
        }
    return {path: node}


def differences(old: Rendered, new: Rendered) -> set[str]:
    """'<kind> <name>: <path>' for every leaf that differs between two renders."""

    def flat(out: Rendered) -> dict[str, Any]:
        return {
            f"{o['kind']} {o['metadata']['name']}: {path}": value
            for o in out.objects
            for path, value in _leaves(o).items()
        }

    a, b, missing = flat(old), flat(new), object()
    return {key for key in a.keys() | b.keys() if a.get(key, missing) != b.get(key, missing)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_renders_differ_only_in_the_gated_fields(rendered: Any, variant: str) -> None:
    assert differences(rendered("1.28", variant), rendered("1.29", variant)) == set()
    assert differences(rendered("1.30", variant), rendered("newest", variant)) == set()
    deployment = f"Deployment {RELEASE}: {PRE_STOP}"
    expected = {
        f"{deployment}.exec.command.0",
        f"{deployment}.exec.command.1",
        f"{deployment}.sleep.seconds",
    }
    if variant in LIFECYCLE:
        expected |= {
            f"ValidatingAdmissionPolicy {POLICY}: apiVersion",
            f"ValidatingAdmissionPolicyBinding {POLICY}: apiVersion",
        }
    assert differences(rendered("1.28", variant), rendered("newest", variant)) == expected


@pytest.mark.parametrize(
    ("version", "hook"),
    [
        ("1.28.0", {"exec": {"command": ["/bin/sleep", "7"]}}),
        ("v1.29.3-eks-adc7111", {"exec": {"command": ["/bin/sleep", "7"]}}),
        ("1.30.0", {"sleep": {"seconds": 7}}),
        ("v1.30.1-gke.1329003", {"sleep": {"seconds": 7}}),
    ],
)
def test_the_pre_stop_pause_is_the_same_on_every_version(
    helm: str, version: str, hook: dict
) -> None:
    """Before 1.30 the kubelet has no sleep action (alpha and off in 1.29, the API server drops
    it): the image's /bin/sleep pauses instead, for as long, within the same grace period."""
    values = {"preStopSleepSeconds": 7, "shutdownGraceSeconds": 25}
    pod = render(helm, values, target=KubeTarget(version)).one("Deployment")["spec"]["template"][
        "spec"
    ]
    assert pod["containers"][0]["lifecycle"] == {"preStop": hook}
    assert pod["terminationGracePeriodSeconds"] == 7 + 25 + 10
    off = render(helm, {"preStopSleepSeconds": 0}, target=KubeTarget(version))
    assert "lifecycle" not in off.one("Deployment")["spec"]["template"]["spec"]["containers"][0]


LIFECYCLE_VALUES = {"replicaCount": 1, "lifecycle": {"enabled": True}}


@pytest.mark.parametrize(
    ("target", "api"),
    [
        (KubeTarget("1.28.0", ADMISSION_POLICY_BETA), "admissionregistration.k8s.io/v1beta1"),
        (KubeTarget("1.29.0", ADMISSION_POLICY_BETA), "admissionregistration.k8s.io/v1beta1"),
        (KubeTarget("1.30.0"), "admissionregistration.k8s.io/v1"),
        # a live install sees discovery: a 1.30+ cluster serving v1 gets v1, and one that has
        # switched v1 off but kept v1beta1 gets v1beta1
        (
            KubeTarget("1.31.0", ("admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",)),
            "admissionregistration.k8s.io/v1",
        ),
        (KubeTarget("1.31.0", ADMISSION_POLICY_BETA), "admissionregistration.k8s.io/v1beta1"),
    ],
    ids=["1.28-beta", "1.29-beta", "1.30", "1.31-discovery-v1", "1.31-discovery-v1beta1"],
)
def test_the_admission_policy_uses_the_api_the_cluster_serves(
    helm: str, target: KubeTarget, api: str
) -> None:
    out = render(helm, LIFECYCLE_VALUES, target=target)
    assert out.one("ValidatingAdmissionPolicy")["apiVersion"] == api
    assert out.one("ValidatingAdmissionPolicyBinding")["apiVersion"] == api


@pytest.mark.parametrize("version", ["1.28.7", "1.29.4"])
def test_the_lifecycle_manager_is_refused_without_the_admission_policy_api(
    helm: str, version: str
) -> None:
    """Its cluster-wide namespace and role-binding grants are safe only with the policy that
    limits them to tenant namespaces: no policy API, no manager (fail closed, saying how)."""
    with pytest.raises(RenderError) as refused:
        render(helm, LIFECYCLE_VALUES, target=KubeTarget(version))
    message = str(refused.value)
    assert f"Kubernetes v{version} does not serve it" in message
    assert "--feature-gates=ValidatingAdmissionPolicy=true" in message
    assert "--runtime-config=admissionregistration.k8s.io/v1beta1=true" in message
    # the gateway alone needs no policy
    assert not render(helm, {}, target=KubeTarget(version)).all("ValidatingAdmissionPolicy")


def test_kubernetes_older_than_1_28_is_refused(helm: str) -> None:
    with pytest.raises(RenderError, match=r"kubeVersion: >=1\.28\.0-0"):
        render(helm, {}, target=KubeTarget("1.27.16"))
    render(helm, {}, target=KubeTarget("1.28.0"))
