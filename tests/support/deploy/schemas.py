"""Check rendered objects against Kubernetes schemas that are available offline.

- Built-in kinds: the Kubernetes OpenAPI schemas shipped by `kubernetes-validate`, strict
  (unknown fields are errors, like `kubectl apply --validate=strict`), for the Kubernetes
  version the objects were rendered for. (The e2e tier applies them to a real API server too.)
- Custom resources (cert-manager, prometheus-operator, Gateway API, Traefik): no registry ships
  their schemas in a form usable here (the one PyPI model set for cert-manager and
  prometheus-operator installs a pytest plugin that breaks collection), and the test API server
  has no such CRDs, so `check_crd_shape` checks every field the chart writes against the
  documented API, refusing unknown ones.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate

SHAPED_CRDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("gateway.networking.k8s.io/v1", "BackendTLSPolicy"),
    ("gateway.networking.k8s.io/v1", "TLSRoute"),
    ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"),
    ("traefik.io/v1alpha1", "ServersTransport"),
    ("traefik.io/v1alpha1", "IngressRouteTCP"),
}


class SchemaProblem(AssertionError):
    pass


def schema_version(kube_version: str) -> str:
    """The `kubernetes-validate` schema set for `kube_version` (its minor release); the
    newest set when the package does not know that release yet."""
    major, minor = (int(p) for p in kube_version.removeprefix("v").split(".")[:2])
    latest = kubernetes_validate.latest_version()
    newest = tuple(int(p) for p in latest.split(".")[:2])
    return latest if (major, minor) > newest else f"{major}.{minor}.0"


def validate(obj: dict[str, Any], kube_version: str) -> str:
    """Validate one object rendered for `kube_version`; return how ("openapi" or "shape");
    raise SchemaProblem."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in SHAPED_CRDS:
        check_crd_shape(obj)
        return "shape"
    version = schema_version(kube_version)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise SchemaProblem(
            f"{key[1]} {obj['metadata'].get('name')}: {where}: {exc.message} (k8s {version})"
        ) from None
    except kubernetes_validate.SchemaNotFoundError:
        raise SchemaProblem(f"no schema for {key} in Kubernetes {version}") from None
    return "openapi"


def _require(obj: dict[str, Any], path: str, types: type | tuple[type, ...]) -> Any:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SchemaProblem(f"{obj['kind']}: missing {path}")
        node = node[part]
    if not isinstance(node, types):
        raise SchemaProblem(f"{obj['kind']}: {path} is {type(node).__name__}")
    return node


def _only(obj: dict[str, Any], node: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(node) - allowed
    if extra:
        raise SchemaProblem(f"{obj['kind']}: {where} has unknown fields {sorted(extra)}")


PARENT_REF = {"group", "kind", "namespace", "name", "sectionName", "port"}


def check_crd_shape(obj: dict[str, Any]) -> None:
    """The fields of Gateway API / Traefik objects the chart writes, by their documented API."""
    kind = obj["kind"]
    _only(obj, obj, {"apiVersion", "kind", "metadata", "spec"}, "the object")
    _require(obj, "metadata.name", str)
    spec = _require(obj, "spec", dict)
    if kind in ("HTTPRoute", "TLSRoute"):
        _only(obj, spec, {"parentRefs", "hostnames", "rules"}, "spec")
        for ref in _require(obj, "spec.parentRefs", list):
            _only(obj, ref, PARENT_REF, "parentRef")
            assert ref["kind"] == "Gateway" and ref["group"] == "gateway.networking.k8s.io"
        for host in _require(obj, "spec.hostnames", list):
            if (
                not isinstance(host, str)
                or host.count("*") > 1
                or ("*" in host and not host.startswith("*."))
            ):
                raise SchemaProblem(f"{kind}: bad hostname {host!r}")
        for rule in _require(obj, "spec.rules", list):
            _only(obj, rule, {"matches", "backendRefs", "filters", "timeouts", "name"}, "rule")
            for ref in rule["backendRefs"]:
                _only(
                    obj, ref, {"group", "kind", "name", "namespace", "port", "weight"}, "backendRef"
                )
                assert isinstance(ref["port"], int)
    elif kind == "BackendTLSPolicy":
        _only(obj, spec, {"targetRefs", "validation", "options"}, "spec")
        for ref in _require(obj, "spec.targetRefs", list):
            _only(obj, ref, {"group", "kind", "name", "sectionName"}, "targetRef")
        validation = _require(obj, "spec.validation", dict)
        _only(
            obj,
            validation,
            {"caCertificateRefs", "wellKnownCACertificates", "hostname", "subjectAltNames"},
            "validation",
        )
        _require(obj, "spec.validation.hostname", str)
        if ("caCertificateRefs" in validation) == ("wellKnownCACertificates" in validation):
            raise SchemaProblem(
                "BackendTLSPolicy: exactly one of caCertificateRefs and wellKnownCACertificates"
            )
    elif kind == "Certificate":
        _only(
            obj,
            spec,
            {
                "secretName",
                "dnsNames",
                "duration",
                "renewBefore",
                "privateKey",
                "usages",
                "issuerRef",
                "commonName",
                "secretTemplate",
            },
            "spec",
        )
        for name in _require(obj, "spec.dnsNames", list):
            if not isinstance(name, str) or not name or name.count("*") > 1:
                raise SchemaProblem(f"Certificate: bad dnsName {name!r}")
        _only(obj, _require(obj, "spec.issuerRef", dict), {"name", "kind", "group"}, "issuerRef")
        _require(obj, "spec.issuerRef.name", str)
        key = _require(obj, "spec.privateKey", dict)
        _only(obj, key, {"algorithm", "size", "rotationPolicy", "encoding"}, "privateKey")
        if key.get("algorithm") not in ("RSA", "ECDSA", "Ed25519"):
            raise SchemaProblem(f"Certificate: privateKey.algorithm {key.get('algorithm')!r}")
        if key.get("rotationPolicy") not in (None, "Never", "Always"):
            raise SchemaProblem("Certificate: privateKey.rotationPolicy")
        usages = {
            "signing",
            "digital signature",
            "content commitment",
            "key encipherment",
            "key agreement",
            "data encipherment",
            "cert sign",
            "crl sign",
            "encipher only",
            "decipher only",
            "any",
            "server auth",
            "client auth",
            "code signing",
            "email protection",
            "s/mime",
            "ipsec end system",
            "ipsec tunnel",
            "ipsec user",
            "timestamping",
            "ocsp signing",
            "microsoft sgc",
            "netscape sgc",
        }
        bad = set(spec.get("usages", [])) - usages
        if bad:
            raise SchemaProblem(f"Certificate: unknown usages {sorted(bad)}")
        for field in ("duration", "renewBefore"):
            if field in spec and not re.fullmatch(r"([0-9]+(\.[0-9]+)?(h|m|s))+", spec[field]):
                raise SchemaProblem(f"Certificate: {field} {spec[field]!r} is not a duration")
    elif kind == "ServiceMonitor":
        _only(obj, spec, {"selector", "endpoints", "namespaceSelector", "jobLabel"}, "spec")
        _require(obj, "spec.selector.matchLabels", dict)
        for ep in _require(obj, "spec.endpoints", list):
            _only(
                obj,
                ep,
                {
                    "port",
                    "path",
                    "scheme",
                    "interval",
                    "scrapeTimeout",
                    "tlsConfig",
                    "bearerTokenSecret",
                    "authorization",
                    "relabelings",
                },
                "endpoint",
            )
            if ep.get("scheme") not in ("http", "https"):
                raise SchemaProblem("ServiceMonitor: scheme")
            if "tlsConfig" in ep:
                _only(
                    obj,
                    ep["tlsConfig"],
                    {"serverName", "ca", "cert", "keySecret", "insecureSkipVerify"},
                    "tlsConfig",
                )
    elif kind == "ServersTransport":
        _only(
            obj,
            spec,
            {
                "serverName",
                "insecureSkipVerify",
                "rootCAs",
                "rootCAsSecrets",
                "certificatesSecrets",
                "maxIdleConnsPerHost",
                "forwardingTimeouts",
                "disableHTTP2",
                "peerCertURI",
                "spiffe",
            },
            "spec",
        )
    elif kind == "IngressRouteTCP":
        _only(obj, spec, {"entryPoints", "routes", "tls"}, "spec")
        for route in _require(obj, "spec.routes", list):
            _only(obj, route, {"match", "services", "priority", "syntax", "middlewares"}, "route")
            for svc in route["services"]:
                _only(
                    obj,
                    svc,
                    {
                        "name",
                        "namespace",
                        "port",
                        "weight",
                        "tls",
                        "proxyProtocol",
                        "serversTransport",
                        "nativeLB",
                        "nodePortLB",
                        "terminationDelay",
                    },
                    "service",
                )
    else:  # pragma: no cover - SHAPED_CRDS lists the kinds above
        raise SchemaProblem(f"no shape check for {kind}")
