"""values.yaml is documented line by line, matches values.schema.json, and a wrong value fails
`helm template` with a message that names the key."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support.deploy.chart import CHART, RenderError, render
from tests.support.deploy.values_docs import undocumented_keys
from tests.support.deploy.variants import VARIANTS


def test_every_value_is_documented() -> None:
    assert undocumented_keys((CHART / "values.yaml").read_text()) == []


def test_documentation_check_finds_a_bare_key() -> None:
    assert undocumented_keys("# a\na: 1\nb: 2\n") == ["values.yaml:3: b"]


def _paths(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        out = set()
        for k, v in node.items():
            out |= {f"{prefix}{k}"} | _paths(v, f"{prefix}{k}.")
        return out
    return set()


def _schema_paths(schema: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in schema.get("properties", {}).items():
        out.add(f"{prefix}{k}")
        if v.get("type") == "object" and v.get("additionalProperties") is False:
            out |= _schema_paths(v, f"{prefix}{k}.")
    return out


def test_schema_and_values_name_the_same_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def fixed(paths: set[str]) -> set[str]:
        return {p for p in paths if all(not p.startswith(f"{free}.") for free in FREE_FORM)}

    declared = fixed(_schema_paths(schema)) - {"global"}
    given = fixed(_paths(values))
    assert declared - given == set(), "schema keys without a default in values.yaml"
    assert given - declared == set(), "values.yaml keys the schema does not know"


FREE_FORM = (
    "resources",
    "nodeSelector",
    "affinity",
    "podLabels",
    "podAnnotations",
    "ingress.annotations",
    "service.annotations",
    "policies.inline",
    "ldap.extra",
    "portal.extra",
    "lifecycle.extra",
    "serviceAccount.annotations",
    "serviceMonitor.labels",
    "networkPolicy.ingressController.namespaceSelector",
    "networkPolicy.ingressController.podSelector",
    "networkPolicy.metricsNamespaceSelector",
    "networkPolicy.egress.tenantNamespaceSelector",
    "networkPolicy.egress.extra",
)


BAD_VALUES = [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"bogus": 1}, "bogus"),
    ({"image": {"repo": "x"}}, "repo"),
    ({"ingress": {"flavour": "haproxy"}}, "/ingress/flavour"),
    ({"rateLimits": {"user": {"burst": 5}}}, "/rateLimits/user"),
    ({"rateLimits": {"user": {"requestsPerSecond": 0}}}, "/rateLimits/user/requestsPerSecond"),
    ({"rateLimits": {"tenants": {"t1": {"users": {}}}}}, "users"),
    ({"impersonation": {"maxGroups": 0}}, "/impersonation/maxGroups"),
    ({"tokenReview": {"timeoutSeconds": 120}}, "/tokenReview/timeoutSeconds"),
    ({"forwardGroups": {"mode": "some"}}, "/forwardGroups/mode"),
    ({"sessions": {"recording": {"mode": "always"}}}, "/sessions/recording/mode"),
    (
        {"sessions": {"recording": {"storage": {"type": "hostPath", "size": "1Gi"}}}},
        "/sessions/recording/storage/type",
    ),
    ({"tls": {"mode": "edge"}}, "/tls/mode"),
    ({"host": "Not A Host"}, "/host"),
    (
        {"oidc": {"issuers": [{"issuer": "http://idp.example.com", "audiences": ["x"]}]}},
        "/oidc/issuers/0/issuer",
    ),
    (
        {
            "oidc": {
                "issuers": [
                    {
                        "issuer": "https://idp.example.com",
                        "audiences": ["x"],
                        "algorithms": ["HS256"],
                    }
                ]
            }
        },
        "/oidc/issuers/0/algorithms/0",
    ),
    (
        {"tenants": [{"name": "Bad_Name", "upstream": "https://x", "credentialsSecret": "s"}]},
        "/tenants/0/name",
    ),
    (
        {"networkPolicy": {"egress": {"idp": {"cidrs": ["not-a-cidr"], "ports": [443]}}}},
        "/networkPolicy/egress/idp/cidrs/0",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"), BAD_VALUES, ids=[m.strip("/'").replace("/", ".") for _, m in BAD_VALUES]
)
def test_a_wrong_value_fails_with_the_key_in_the_message(
    helm: str, values: dict, message: str
) -> None:
    with pytest.raises(RenderError) as err:
        render(helm, values)
    text = str(err.value)
    assert "values don't meet the specifications of the schema" in text
    # Helm 4 names the key as a JSON pointer (/a/b/0), Helm 3 with dots (a.b.0).
    assert message in text or message.strip("/").replace("/", ".") in text, text


TEMPLATE_CHECKS = [
    (
        {"lifecycle": {"enabled": True}, "replicaCount": 3},
        "replicaCount is 3, but lifecycle.store.type sqlite allows exactly one replica",
    ),
    (
        {"lifecycle": {"enabled": True}, "replicaCount": 1, "autoscaling": {"enabled": True}},
        "autoscaling.enabled needs several replicas",
    ),
    ({"tls": {"source": "certManager"}}, "set tls.certManager.issuerRef.name"),
    ({"ldap": {"enabled": True}}, "set ldap.bindPasswordSecret.name"),
    ({"tls": {"mode": "passthrough"}}, "ingress-nginx matches SSL-passthrough hosts exactly"),
    ({"portal": {"enabled": True}}, "set portal.clientSecret.name and portal.cookieSecret.name"),
    ({"host": "", "baseDomain": ""}, "set host, baseDomain, or both"),
    ({"ingress": {"flavour": "gatewayAPI", "gatewayRefs": []}}, "ingress.gatewayRefs"),
    (
        {
            "portal": {
                "enabled": True,
                "clientSecret": {"name": "p", "key": "k"},
                "cookieSecret": {"name": "p", "key": "c"},
            },
            "host": "",
        },
        "portal.enabled: set host",
    ),
    (
        {
            "tenants": [
                {"name": "t1", "upstream": "https://a", "credentialsSecret": "a"},
                {"name": "t1", "upstream": "https://b", "credentialsSecret": "b"},
            ]
        },
        'tenants: "t1" is listed twice',
    ),
    (
        {
            "replicaCount": 2,
            "sessions": {
                "recording": {"mode": "required", "storage": {"type": "persistentVolumeClaim"}}
            },
        },
        "sessions.recording.storage is a persistentVolumeClaim without ReadWriteMany",
    ),
    (
        {"sessions": {"recording": {"mode": "required", "storage": {"size": "1Gi"}}}},
        "sessions.recording.maxDirectoryBytes (1610612736) must stay below",
    ),
    (
        {
            "forwardGroups": {"mode": "all"},
            "policies": {
                "inline": {
                    "all.yaml": {"tenant": "*", "roles": {}, "forward_groups": {"mode": "roles"}}
                }
            },
        },
        "forwardGroups.mode and the forward_groups.mode of policies.inline all.yaml",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"),
    TEMPLATE_CHECKS,
    ids=[
        "sqlite-replicas",
        "sqlite-hpa",
        "cert-manager-issuer",
        "ldap-password",
        "nginx-passthrough-wildcard",
        "portal-secrets",
        "no-name",
        "no-gateway",
        "portal-without-host",
        "tenant-twice",
        "recording-pvc-replicas",
        "recording-over-volume",
        "forward-groups-twice",
    ],
)
def test_combinations_fail_with_a_sentence(helm: str, values: dict, message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(helm, values)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_passes(helm: str, variant: str, tmp_path) -> None:
    import subprocess

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VARIANTS[variant]))
    proc = subprocess.run(
        [helm, "lint", str(CHART), "--strict", "--values", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout
