"""Host-cluster objects of one tenant (helm provisioner): namespace, isolation, admin RBAC.

Every object carries `vgate.io/tenant=<name>`; deletes only ever target the tenant's own
namespace, and only when that namespace carries the tenant's label.
"""

from __future__ import annotations

from gateway.lifecycle.kube import Manifest
from gateway.lifecycle.model import TenantSpec

TENANT_LABEL = "vgate.io/tenant"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vgate"}
QUOTA = "vgate-quota"
LIMITS = "vgate-limits"
NETPOL = "vgate-isolate"
GATEWAY_NETPOL = "vgate-gateway"
ADMIN_ROLE = "vgate-tenant-admin"
ADMIN_BINDING = "vgate-tenant-admins"
TOKEN_SECRET = "vgate-gateway-token"

# What the tenant's admin group may see in its host namespace: enough to debug the virtual
# cluster's pods, never Secrets (the vc-<name> Secret holds a system:masters certificate).
ADMIN_RULES = [
    {
        "apiGroups": [""],
        "resources": [
            "pods",
            "pods/log",
            "services",
            "endpoints",
            "events",
            "configmaps",
            "persistentvolumeclaims",
            "resourcequotas",
            "limitranges",
        ],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["apps"],
        "resources": ["statefulsets", "deployments", "replicasets"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies", "ingresses"],
        "verbs": ["get", "list", "watch"],
    },
]


def labels(tenant: str) -> dict[str, str]:
    return {**MANAGED_BY, TENANT_LABEL: tenant}


def namespace(spec: TenantSpec, name: str, pod_security: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                **labels(spec.name),
                "pod-security.kubernetes.io/enforce": pod_security,
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


def resource_quota(spec: TenantSpec, ns: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": QUOTA, "namespace": ns, "labels": labels(spec.name)},
        "spec": {"hard": dict(spec.quota)},
    }


def limit_range(spec: TenantSpec, ns: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": LIMITS, "namespace": ns, "labels": labels(spec.name)},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": "500m", "memory": "512Mi"},
                    "defaultRequest": {"cpu": "50m", "memory": "64Mi"},
                }
            ]
        },
    }


def network_policy(spec: TenantSpec, ns: str, gateway_namespace: str) -> Manifest:
    """Ingress only from the tenant's own namespace and from the gateway's."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": NETPOL, "namespace": ns, "labels": labels(spec.name)},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {}},
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": gateway_namespace}
                            }
                        },
                    ]
                }
            ],
        },
    }


def gateway_ingress(spec: TenantSpec, ns: str, gateway_namespace: str) -> Manifest:
    """Always present: the gateway may reach the tenant's API server pods, whatever other
    policies (vcluster's own, or `vgate-isolate`) select them — NetworkPolicies add up."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": GATEWAY_NETPOL, "namespace": ns, "labels": labels(spec.name)},
        "spec": {
            "podSelector": {"matchLabels": {"app": "vcluster", "release": spec.name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": gateway_namespace}
                            }
                        }
                    ]
                }
            ],
        },
    }


def admin_role(spec: TenantSpec, ns: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": ADMIN_ROLE, "namespace": ns, "labels": labels(spec.name)},
        "rules": ADMIN_RULES,
    }


def admin_binding(spec: TenantSpec, ns: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": ADMIN_BINDING, "namespace": ns, "labels": labels(spec.name)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ADMIN_ROLE},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}
            for g in spec.admin_groups
        ],
    }


MANAGER_BINDING = "vgate-lifecycle-manager"


def manager_binding(
    spec: TenantSpec, ns: str, cluster_role: str, service_account: str, sa_namespace: str
) -> Manifest:
    """The manager's own access inside the tenant namespace: its ServiceAccount bound to a
    ClusterRole that is never bound cluster-wide (the Helm chart's `<release>-tenant-manager`),
    so it reads Secrets in tenant namespaces only."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": MANAGER_BINDING, "namespace": ns, "labels": labels(spec.name)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}
        ],
    }
