"""Values for each way the chart is meant to be installed (ingress flavour x TLS mode, stores)."""

from __future__ import annotations

from typing import Any

# Values that must never show up in rendered output: the test "secrets" a user keeps in the
# Secrets the chart refers to by name.
SECRET_VALUES = (
    "ldap-S3cret-bind-pw",
    "idp-client-S3cret",
    "cookie-S3cret-0123456789abcdef",
    "tenant-token-S3cret",
)

FULL: dict[str, Any] = {
    "oidc": {
        "issuers": [
            {
                "issuer": "https://idp.corp.example.com",
                "audiences": ["vgate"],
                "usernameClaim": "email",
                "usernamePrefix": "oidc:",
                "groupsClaim": "groups",
                "groupsPrefix": "oidc:",
                "caConfigMap": "idp-ca",
            }
        ]
    },
    "ldap": {
        "enabled": True,
        "urls": ["ldaps://dc1.corp.example.com:636"],
        "bindDN": "CN=vgate,OU=Service,DC=corp,DC=example,DC=com",
        "bindPasswordSecret": {"name": "vgate-ldap", "key": "password"},
        "userBaseDN": "DC=corp,DC=example,DC=com",
        "groupBaseDN": "DC=corp,DC=example,DC=com",
        "caConfigMap": "corp-ca",
    },
    "portal": {
        "enabled": True,
        "issuer": "https://idp.corp.example.com",
        "clientSecret": {"name": "vgate-portal", "key": "client-secret"},
        "cookieSecret": {"name": "vgate-portal", "key": "cookie-secret"},
    },
    "tenants": [
        {
            "name": "legacy",
            "upstream": "https://10.20.0.5:6443",
            "credentialsSecret": "legacy-vgate",
        },
        {
            "name": "edge",
            "upstream": "https://edge.example.com",
            "auth": "clientCertificate",
            "credentialsSecret": "edge-vgate",
            "caKey": "-",
        },
    ],
    "policies": {
        "inline": {
            "legacy.yaml": {"tenant": "legacy", "roles": {"view": {"groups": ["oidc:developers"]}}}
        }
    },
    "networkPolicy": {
        "egress": {
            "idp": {"cidrs": ["203.0.113.10/32"], "ports": [443]},
            "directory": {"cidrs": ["10.1.0.0/24"], "ports": [636]},
            "kubeAPIServer": {"cidrs": ["10.0.0.1/32"], "ports": [443]},
            "staticTenants": {"cidrs": ["10.20.0.0/16"], "ports": [6443]},
            "extra": [
                {
                    "to": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "keycloak"}
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 8443}],
                }
            ],
        }
    },
}

# name -> values. Every flavour with both TLS modes, both certificate sources, both stores.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "nginx-passthrough-single-host": {"tls": {"mode": "passthrough"}, "baseDomain": ""},
    "traefik-reencrypt": {
        "ingress": {"flavour": "traefik"},
        "tls": {"backend": {"caConfigMap": "vgate-backend-ca"}},
    },
    "traefik-passthrough": {"ingress": {"flavour": "traefik"}, "tls": {"mode": "passthrough"}},
    "gatewayapi-reencrypt": {
        "ingress": {"flavour": "gatewayAPI", "gatewayAPIRequestTimeout": "0s"}
    },
    "nginx-reencrypt-verified": {
        "tls": {
            "backend": {
                "secretName": "vgate-internal-tls",
                "caSecret": "vgate-backend-ca",
                "serverName": "vgate.vgate-system.svc",
            }
        }
    },
    "gatewayapi-reencrypt-ca": {
        "ingress": {"flavour": "gatewayAPI"},
        "tls": {
            "backend": {
                "secretName": "vgate-internal-tls",
                "caConfigMap": "vgate-backend-ca",
                "serverName": "vgate.vgate-system.svc",
            }
        },
    },
    "gatewayapi-passthrough": {
        "ingress": {"flavour": "gatewayAPI"},
        "tls": {"mode": "passthrough"},
    },
    "gatewayapi-passthrough-v1alpha2": {
        "ingress": {
            "flavour": "gatewayAPI",
            "tlsRouteAPIVersion": "gateway.networking.k8s.io/v1alpha2",
        },
        "tls": {"mode": "passthrough"},
    },
    "cert-manager": {
        "tls": {
            "source": "certManager",
            "certManager": {"issuerRef": {"name": "letsencrypt-dns01"}},
        }
    },
    "no-ingress-loadbalancer": {
        "ingress": {"flavour": "none"},
        "service": {"type": "LoadBalancer"},
        "networkPolicy": {"clientCIDRs": ["0.0.0.0/0", "::/0"]},
    },
    "lifecycle-sqlite": {"replicaCount": 1, "lifecycle": {"enabled": True}},
    "lifecycle-kubernetes-ha": {
        "replicaCount": 3,
        "autoscaling": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "lifecycle": {"enabled": True, "store": {"type": "kubernetes"}},
    },
    "static-tenants": {k: v for k, v in FULL.items() if k not in ("ldap", "portal")},
    # what the gateway shapes: impersonation caps, TokenReview caching, rate limits, the
    # default forward_groups, session recording on a PVC (one replica) ...
    "shaping-recording-pvc": {
        "replicaCount": 1,
        "tenants": [
            {
                "name": "ci",
                "upstream": "https://10.20.0.6:6443",
                "credentialsSecret": "ci-vgate",
                "tokenPassthrough": True,
                "serviceAccountIssuer": "https://kubernetes.default.svc.cluster.local",
            }
        ],
        "impersonation": {"maxHeaderBytes": 16384, "maxGroups": 100},
        "forwardGroups": {"mode": "referenced", "names": ["oidc:oncall"], "match": "^CN=team-"},
        "tokenReview": {"cacheSeconds": 120, "negativeCacheSeconds": 5, "cacheSize": 5000},
        "rateLimits": {
            "global": {"requestsPerSecond": 5000, "burst": 10000, "concurrentStreams": 20000},
            "tenant": {"requestsPerSecond": 500, "concurrentStreams": 2000},
            "user": {"requestsPerSecond": 20.5, "burst": 40, "concurrentStreams": 50},
            "roles": {"cluster-admin": {"requestsPerSecond": 100, "concurrentStreams": 200}},
            "tenants": {
                "ci-heavy": {
                    "tenant": {"requestsPerSecond": 2000},
                    "user": {"requestsPerSecond": 200},
                    "roles": {"view": {"concurrentStreams": 5}},
                }
            },
            "idleSeconds": 600,
            "maxKeys": 131072,
        },
        "sessions": {
            "bridge": False,
            "recording": {
                "mode": "best-effort",
                "tenants": {"prod": {"mode": "required", "stdin": "never"}},
                "roles": {"cluster-admin": {"mode": "required"}},
                "maxDirectoryBytes": 10737418240,
                "storage": {
                    "type": "persistentVolumeClaim",
                    "size": "20Gi",
                    "storageClassName": "fast",
                },
            },
        },
    },
    # ... or on each pod's emptyDir, several replicas, for one role only, on an existing
    # policy ConfigMap (the default forward_groups projected beside its files)
    "recording-emptydir-ha": {
        "replicaCount": 3,
        "forwardGroups": {"mode": "all"},
        "policies": {"existingConfigMap": "corp-policies"},
        "sessions": {"recording": {"roles": {"cluster-admin": {"mode": "required"}}}},
    },
    "full": FULL,
}
