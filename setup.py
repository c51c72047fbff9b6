"""Build hook for the one thing pyproject.toml cannot say: with `VGATE_COMPILE=1` in the
environment, the request path is compiled to C extension modules with mypyc (the image
does this; see deploy/image/Dockerfile and the README's "Compiled request path").

Without it (`pip install -e .`, the quickstart, the test suite) every module stays plain
Python. The compiled modules are the same source: mypyc turns the type hints mypy already
checks into native attribute access and direct calls, and checks them at run time.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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


def wanted() -> bool:
    """VGATE_COMPILE: 1 compiles the request path, unset or 0 does not."""
    value = os.environ.get("VGATE_COMPILE", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value not in ("1", "true", "yes"):
        raise SystemExit(f"VGATE_COMPILE={value!r}: expected 1 (compile) or 0 (plain Python)")
    return True


class BuildRequestPath(build_ext):
    """Runs mypyc when extensions are built, not for every setup.py call (pip calls it three
    times per wheel: build requirements, metadata, the wheel)."""

    def finalize_options(self) -> None:
        from mypyc.build import mypycify  # a build requirement (pyproject.toml)

        self.distribution.ext_modules = mypycify(REQUEST_PATH, opt_level="3", debug_level="1")
        super().finalize_options()


# the placeholder tells setuptools the wheel is platform-specific; the command fills in the rest
setup(
    ext_modules=[Extension("gateway.pipeline", sources=[])] if wanted() else [],
    cmdclass={"build_ext": BuildRequestPath},
)
