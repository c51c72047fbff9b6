"""Build hook for the one thing pyproject.toml cannot say: with `VGATE_COMPILE=1` in the
environment, the request path is compiled to C extension modules with mypyc (the image
does this; see deploy/image/Dockerfile and the README's "Compiled request path").

Without it (`pip install -e .`, the quickstart, the test suite) every module stays plain
Python. The compiled modules are the same source: mypyc turns the type hints mypy already
checks into native attribute access and direct calls, and checks them at run time.
"""

from __future__ import annotations

import os

from setuptools import setup

#: The modules every proxied request runs through (route → authn → policy → rewrite →
#: forward → record, and the connections on both sides). Everything else (configuration,
#: lifecycle, portal, login, CLI) stays interpreted: it runs once per change, not per request.
REQUEST_PATH = [
    "gateway/flow.py",
    "gateway/pipeline.py",
    "gateway/route.py",
    "gateway/rewrite.py",
    "gateway/identity.py",
    "gateway/credentials.py",
    "gateway/metrics.py",
    "gateway/http/admission.py",
    "gateway/http/client_address.py",
    "gateway/http/connection.py",
    "gateway/http/exchange.py",
    "gateway/http/headers.py",
    "gateway/http/status.py",
    "gateway/http/target.py",
    "gateway/authn/authenticator.py",
    "gateway/authn/errors.py",
    "gateway/authn/jws.py",
    "gateway/authn/keys.py",
    "gateway/authn/tenant_tokens.py",
    "gateway/authn/token_cache.py",
    "gateway/authn/verify.py",
    "gateway/policy/engine.py",
    "gateway/forward/connection.py",
    "gateway/forward/failure.py",
    "gateway/forward/forwarder.py",
    "gateway/forward/health.py",
    "gateway/forward/multiplex.py",
    "gateway/forward/multiplex_pool.py",
    "gateway/forward/pool.py",
    "gateway/forward/response.py",
    "gateway/limits/limiter.py",
    "gateway/limits/table.py",
    "gateway/names/dn.py",
    "gateway/names/kube.py",
    "gateway/record/audit.py",
    "gateway/record/recorder.py",
]


def compiled_extensions() -> list:
    """The request path as mypyc extensions when VGATE_COMPILE=1, else none."""
    wanted = os.environ.get("VGATE_COMPILE", "").strip().lower()
    if wanted in ("", "0", "false", "no"):
        return []
    if wanted not in ("1", "true", "yes"):
        raise SystemExit(f"VGATE_COMPILE={wanted!r}: expected 1 (compile) or 0 (plain Python)")
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    return mypycify(REQUEST_PATH, opt_level="3", debug_level="1")


setup(ext_modules=compiled_extensions())
