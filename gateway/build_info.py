"""How this installation of vgate was built: whether the request path runs as modules mypyc
compiled (the image, `VGATE_COMPILE=1`) or as plain Python (`pip install -e .`)."""

from __future__ import annotations

import importlib.machinery
import importlib.util

from gateway import __version__

#: The modules every proxied request runs through (route → authn → policy → rewrite →
#: forward → record, and the connections on both sides): what setup.py compiles with mypyc
#: when VGATE_COMPILE=1. Everything else (configuration, lifecycle, portal, login, CLI) stays
#: interpreted: it runs once per change, not per request. A literal: setup.py reads it from
#: this file without importing the package (a build has none of its dependencies).
REQUEST_PATH = (
    "gateway.flow",
    "gateway.pipeline",
    "gateway.route",
    "gateway.rewrite",
    "gateway.identity",
    "gateway.credentials",
    "gateway.metrics",
    "gateway.http.admission",
    "gateway.http.client_address",
    "gateway.http.connection",
    "gateway.http.exchange",
    "gateway.http.headers",
    "gateway.http.status",
    "gateway.http.target",
    "gateway.authn.authenticator",
    "gateway.authn.errors",
    "gateway.authn.jws",
    "gateway.authn.keys",
    "gateway.authn.tenant_tokens",
    "gateway.authn.token_cache",
    "gateway.authn.verify",
    "gateway.policy.engine",
    "gateway.forward.connection",
    "gateway.forward.failure",
    "gateway.forward.forwarder",
    "gateway.forward.health",
    "gateway.forward.multiplex",
    "gateway.forward.multiplex_pool",
    "gateway.forward.pool",
    "gateway.forward.response",
    "gateway.limits.limiter",
    "gateway.limits.table",
    "gateway.names.dn",
    "gateway.names.kube",
    "gateway.record.audit",
    "gateway.record.recorder",
)
#: a module every request runs through; setup.py compiles it with the rest of the request path
_PROBE = "gateway.pipeline"


def request_path_build() -> str:
    """ "compiled" when the request path is a native extension, else "interpreted"."""
    spec = importlib.util.find_spec(_PROBE)
    origin = spec.origin if spec is not None else None
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return "compiled" if origin and origin.endswith(suffixes) else "interpreted"


def describe() -> str:
    """One line for the start-up log and `vgate --version`."""
    return f"vgate {__version__} (request path {request_path_build()})"
