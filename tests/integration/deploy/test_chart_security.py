"""What the chart must hold for security: a locked-down pod, secrets only as mounted files,
ingress only from the ingress controller, and the least host RBAC for the lifecycle manager."""

from __future__ import annotations

import pytest

from tests.support.deploy.chart import NAMESPACE, RELEASE, Rendered, render
from tests.support.deploy.variants import SECRET_VALUES, VARIANTS


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, Rendered]:
    return {name: render(helm, values) for name, values in VARIANTS.items()}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pod_is_locked_down(rendered: dict[str, Rendered], variant: str) -> None:
    pod = rendered[variant].one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # Writable places are explicit, bounded volumes.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if not mount.get("readOnly"):
            v = volumes[mount["name"]]
            assert ("emptyDir" in v and v["emptyDir"]["sizeLimit"]) or "persistentVolumeClaim" in v


@pytest.mark.parametrize("grace", [0, 25, 90.5])
def test_termination_outlasts_the_drain(helm: str, grace: float) -> None:
    out = render(helm, {"shutdownGraceSeconds": grace, "preStopSleepSeconds": 5})
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    assert out.gateway_config()["limits"]["shutdown_grace_seconds"] == grace
    assert pod["terminationGracePeriodSeconds"] > grace + 5
    assert pod["containers"][0]["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_secret_in_clear_text(rendered: dict[str, Rendered], variant: str) -> None:
    out = rendered[variant]
    assert not out.all("Secret"), "the chart must only refer to Secrets by name"
    for value in SECRET_VALUES:
        assert value not in out.text
    container = out.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    # Environment: no envFrom, no valueFrom, only the helm folders of the lifecycle manager.
    assert "envFrom" not in container
    for var in container.get("env", []):
        assert "valueFrom" not in var
        assert var["name"].startswith("HELM_") and var["value"].startswith("/tmp/"), var
    # Every credential the config names is a file under a Secret volume.
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    secret_mounts = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if "secret" in next(v for v in pod["volumes"] if v["name"] == m["name"])
        or "projected" in next(v for v in pod["volumes"] if v["name"] == m["name"])
    ]
    for key, path in _file_settings(out.gateway_config()):
        if key in (
            "ca_file",
            "policies",
            "flush_file",
            "values_file",
            "session_store_file",
        ):  # state the gateway writes, not a credential
            continue
        assert any(path.startswith(m + "/") for m in secret_mounts), (key, path)


def _file_settings(node: object, key: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _file_settings(v, k)]
    if isinstance(node, list):
        return [kv for v in node for kv in _file_settings(v, key)]
    return [(key, node)] if key.endswith("_file") and isinstance(node, str) else []


def test_secret_material_cannot_be_passed_through_values(helm: str) -> None:
    from tests.support.deploy.chart import RenderError

    for section in ("ldap", "portal", "lifecycle"):
        with pytest.raises(RenderError, match="bind_password"):
            render(helm, {section: {"extra": {"bind_password": SECRET_VALUES[0]}}})
    out = render(helm, {"ldap": {"extra": {"cache_ttl_seconds": 30}}})
    assert "ldap" not in out.gateway_config()  # extra keys only with the section enabled


def test_secret_volumes_are_not_world_readable(rendered: dict[str, Rendered]) -> None:
    pod = rendered["full"].one("Deployment")["spec"]["template"]["spec"]
    for volume in pod["volumes"]:
        for kind in ("secret", "projected"):
            if kind in volume:
                assert volume[kind]["defaultMode"] & 0o007 == 0, volume["name"]
    assert pod["automountServiceAccountToken"] is False


def test_network_policy_admits_only_the_ingress_controller(rendered: dict[str, Rendered]) -> None:
    policy = rendered["full"].one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "ingress-nginx"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    egress = policy["egress"]
    cidrs = {b["ipBlock"]["cidr"] for r in egress for b in r["to"] if "ipBlock" in b}
    assert cidrs == {"203.0.113.10/32", "10.1.0.0/24", "10.0.0.1/32", "10.20.0.0/16"}
    assert all("0.0.0.0/0" not in str(r) for r in egress)
    assert egress[-1]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "keycloak"
    }
    dns = egress[0]
    assert {p["port"] for p in dns["ports"]} == {53}
    tenants = [
        r
        for r in egress
        if any(
            "namespaceSelector" in p and "matchExpressions" in p["namespaceSelector"]
            for p in r["to"]
        )
    ]
    assert (
        tenants[0]["to"][0]["namespaceSelector"]["matchExpressions"][0]["key"] == "vgate.io/tenant"
    )
    # Direct clients only when listed.
    direct = render_direct(rendered)
    assert direct == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    # Prometheus gets in only when a ServiceMonitor asks it to scrape.
    ha = rendered["lifecycle-kubernetes-ha"].one("NetworkPolicy")["spec"]["ingress"]
    assert len(ha) == 2
    assert ha[1]["ports"] == [{"protocol": "TCP", "port": 9090}]  # metrics, not the gateway


def render_direct(rendered: dict[str, Rendered]) -> list[dict]:
    ingress = rendered["no-ingress-loadbalancer"].one("NetworkPolicy")["spec"]["ingress"]
    assert len(ingress) == 2
    assert ingress[1]["ports"] == [{"protocol": "TCP", "port": 8443}]
    return ingress[1]["from"]


def _rules(out: Rendered, kind: str, name: str) -> list[dict]:
    return out.one(kind, name)["rules"]


def test_no_rbac_without_the_lifecycle_manager(rendered: dict[str, Rendered]) -> None:
    for variant in ("default", "full"):
        kinds = rendered[variant].kinds()
        assert not kinds & {
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ValidatingAdmissionPolicy",
        }


@pytest.mark.parametrize("variant", ["lifecycle-sqlite", "lifecycle-kubernetes-ha"])
def test_lifecycle_rbac_is_least_privilege(rendered: dict[str, Rendered], variant: str) -> None:
    out = rendered[variant]
    cluster_wide = _rules(out, "ClusterRole", f"{RELEASE}-lifecycle")
    # Bound cluster-wide: no Secrets, no wildcards, bind limited to one named ClusterRole.
    for rule in cluster_wide:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]
        assert "clusterrolebindings" not in rule["resources"]
        assert "escalate" not in rule["verbs"] and "impersonate" not in rule["verbs"]
    bind = next(r for r in cluster_wide if "bind" in r["verbs"])
    assert bind["resourceNames"] == [f"{RELEASE}-tenant-manager"]
    assert {tuple(r["resources"]): r["verbs"] for r in cluster_wide} == {
        ("namespaces",): ["get", "list", "watch", "create", "patch", "delete"],
        ("rolebindings",): ["create", "patch"],
        ("clusterroles",): ["bind"],
    }
    binding = out.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == f"{RELEASE}-lifecycle"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]
    # Secrets only through the per-tenant-namespace role, which nothing binds cluster-wide.
    tenant_role = _rules(out, "ClusterRole", f"{RELEASE}-tenant-manager")
    assert any("secrets" in r["resources"] for r in tenant_role)
    assert all(
        b["roleRef"]["name"] != f"{RELEASE}-tenant-manager" for b in out.all("ClusterRoleBinding")
    )
    for rule in tenant_role:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"nodes", "namespaces", "clusterroles", "clusterrolebindings"} & set(
            rule["resources"]
        )
    # The gateway pod gets a token only because the manager needs it.
    pod = out.one("Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    # Every rule is explained in a comment.
    for name in (f"{RELEASE}-lifecycle", f"{RELEASE}-tenant-manager"):
        source = out.text.split(f"name: {name}\n", 1)[1].split("---", 1)[0]
        assert source.count("- apiGroups:") <= source.count("#"), name


def test_admission_policy_confines_the_cluster_scoped_writes(rendered: dict[str, Rendered]) -> None:
    out = rendered["lifecycle-sqlite"]
    policy = out.one("ValidatingAdmissionPolicy")["spec"]
    assert policy["failurePolicy"] == "Fail"
    resources = {r["resources"][0] for r in policy["matchConstraints"]["resourceRules"]}
    assert resources == {"namespaces", "rolebindings"}
    assert (
        policy["matchConditions"][0]["expression"]
        == f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:{RELEASE}"'
    )
    assert {v["name"] for v in policy["variables"]} == {"label", "newLabelled", "oldLabelled"}
    assert (
        next(v for v in policy["variables"] if v["name"] == "label")["expression"]
        == "'vgate.io/tenant'"
    )
    binding = out.one("ValidatingAdmissionPolicyBinding")["spec"]
    assert binding == {
        "policyName": out.one("ValidatingAdmissionPolicy")["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_store_role_is_namespaced(rendered: dict[str, Rendered]) -> None:
    out = rendered["lifecycle-kubernetes-ha"]
    role = out.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert any(r["resources"] == ["secrets"] for r in role["rules"])
    assert out.one("RoleBinding")["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
