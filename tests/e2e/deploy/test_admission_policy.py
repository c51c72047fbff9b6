"""e2e: the lifecycle manager's host RBAC and the ValidatingAdmissionPolicy that narrows it, as a
real API server enforces them. The chart is installed with `helm install` (helm asks the server
for its version and APIs itself), and the manager acts with a TokenRequest token of its own
ServiceAccount: it may write tenant namespaces and role bindings inside them, and nothing else
with its cluster-wide grants."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable

import pytest
import yaml

from tests.support.deploy import cluster
from tests.support.kube import KUBECTL, ApiServer

# A release of its own, beside the other chart tests on the shared API server.
RELEASE = "vgate-admission"
NAMESPACE = "vgate-admission"
MANAGER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
LABEL = "vgate.io/tenant"
NAMESPACE_DENIED = (
    f"the vgate lifecycle manager may only create, change or delete namespaces labelled {LABEL}"
)
BINDING_DENIED = f"the vgate lifecycle manager may only bind roles in namespaces labelled {LABEL}"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def installed(helm: str, kube_api: ApiServer) -> str:
    """`helm install` of the lifecycle manager; its manifest as helm applied it."""
    values = {"replicaCount": 1, "lifecycle": {"enabled": True}}
    proc = cluster.helm_install(helm, kube_api, RELEASE, NAMESPACE, values)
    assert proc.returncode == 0, proc.stderr
    proc = cluster.helm(helm, kube_api, "get", "manifest", RELEASE, namespace=NAMESPACE)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def manager(
    installed: str, kube_api: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    """kubectl as the lifecycle manager (its ServiceAccount's token), once the API server
    enforces the policy (it loads policies and bindings asynchronously)."""
    token = kube_api.kubectl("create", "token", RELEASE, "-n", NAMESPACE).stdout.strip()
    kubeconfig = tmp_path_factory.mktemp("manager") / "kubeconfig"
    kubeconfig.write_text(kube_api.kubeconfig_text(token, user=RELEASE))

    def kubectl(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout == MANAGER
    deadline = time.monotonic() + 60
    while (
        NAMESPACE_DENIED not in kubectl("create", "namespace", "probe", "--dry-run=server").stderr
    ):
        assert time.monotonic() < deadline, "the admission policy was never enforced"
        time.sleep(0.2)
    return kubectl


def namespace(name: str, *, labelled: bool) -> str:
    labels = {LABEL: name} if labelled else {}
    return yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def refused(proc: subprocess.CompletedProcess[str], message: str) -> bool:
    return proc.returncode != 0 and "forbidden" in proc.stderr and message in proc.stderr


def test_helm_picked_the_policy_api_the_server_serves(installed: str, kube_api: ApiServer) -> None:
    served = kube_api.kubectl(
        "api-resources", "--api-group=admissionregistration.k8s.io", "-o", "wide"
    ).stdout
    policy = next(
        d for d in yaml.safe_load_all(installed) if d and d["kind"] == "ValidatingAdmissionPolicy"
    )
    version = policy["apiVersion"]
    line = next(ln for ln in served.splitlines() if ln.startswith("validatingadmissionpolicies "))
    assert version in line.split()


def test_manager_may_create_change_and_delete_tenant_namespaces(manager: Kubectl) -> None:
    name = unique("vc-team")
    assert manager("create", "-f", "-", input=namespace(name, labelled=True)).returncode == 0
    changed = manager("label", "namespace", name, "pod-security.kubernetes.io/enforce=baseline")
    assert changed.returncode == 0, changed.stderr
    deleted = manager("delete", "namespace", name, "--wait=false")
    assert deleted.returncode == 0, deleted.stderr


def test_manager_may_not_create_an_unlabelled_namespace(manager: Kubectl) -> None:
    assert refused(
        manager("create", "-f", "-", input=namespace(unique("x"), labelled=False)), NAMESPACE_DENIED
    )


def test_manager_may_not_adopt_delete_or_unlabel_other_namespaces(
    manager: Kubectl, kube_api: ApiServer
) -> None:
    # RBAC lets the manager patch and delete every namespace; only the policy stops it.
    # (kube-system itself the API server never deletes, so an application namespace.)
    apps = unique("apps")
    kube_api.kubectl("create", "-f", "-", input=namespace(apps, labelled=False))
    for victim in ("kube-system", apps, NAMESPACE):
        assert refused(manager("label", "namespace", victim, f"{LABEL}={victim}"), NAMESPACE_DENIED)
    for victim in (apps, NAMESPACE):
        assert refused(manager("delete", "namespace", victim, "--wait=false"), NAMESPACE_DENIED)
        left = kube_api.kubectl("get", "namespace", victim, "-o", "json").stdout
        assert LABEL not in left and '"deletionTimestamp"' not in left
    tenant = unique("vc-team")
    assert manager("create", "-f", "-", input=namespace(tenant, labelled=True)).returncode == 0
    assert refused(manager("label", "namespace", tenant, f"{LABEL}-"), NAMESPACE_DENIED)


def binding(namespace_name: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{RELEASE}-tenant-manager", "namespace": namespace_name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{RELEASE}-tenant-manager",
            },
            "subjects": [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}],
        }
    )


def test_role_bindings_only_in_tenant_namespaces(manager: Kubectl) -> None:
    tenant = unique("vc-team")
    assert manager("create", "-f", "-", input=namespace(tenant, labelled=True)).returncode == 0
    bound = manager("create", "-f", "-", input=binding(tenant))
    assert bound.returncode == 0, bound.stderr
    # bound there, the tenant role reaches into that namespace (and only there)
    assert manager("auth", "can-i", "get", "secrets", "-n", tenant).stdout.strip() == "yes"
    assert manager("auth", "can-i", "get", "secrets", "-n", "kube-system").stdout.strip() == "no"
    # RBAC would let it bind the tenant role in kube-system; the policy refuses
    assert refused(manager("create", "-f", "-", input=binding("kube-system")), BINDING_DENIED)
    assert refused(manager("create", "-f", "-", input=binding(NAMESPACE)), BINDING_DENIED)


def test_other_users_are_not_affected(manager: Kubectl, kube_api: ApiServer) -> None:
    name = unique("plain")
    kube_api.kubectl("create", "-f", "-", input=namespace(name, labelled=False))
    kube_api.kubectl("delete", "namespace", name, "--wait=false")


def test_the_manager_has_no_other_cluster_wide_power(manager: Kubectl) -> None:
    for verb, resource in [
        ("create", "clusterrolebindings"),
        ("get", "secrets"),
        ("create", "pods"),
        ("delete", "customresourcedefinitions"),
        ("bind", "clusterroles/cluster-admin"),
    ]:
        answer = manager("auth", "can-i", verb, resource, "--all-namespaces").stdout.strip()
        assert answer == "no", (verb, resource)
