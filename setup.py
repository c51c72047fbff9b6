"""Build hook for the one thing pyproject.toml cannot say: with `VGATE_COMPILE=1` in the
environment, the request path is compiled to C extension modules with mypyc (the image
does this; see deploy/image/Dockerfile and the README's "Compiled request path").

Without it (`pip install -e .`, the quickstart, the test suite) every module stays plain
Python. The compiled modules are the same source: mypyc turns the type hints mypy already
checks into native attribute access and direct calls, and checks them at run time.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def request_path() -> list[str]:
    """The source files of `gateway.build_info.REQUEST_PATH` (the modules every proxied
    request runs through), read from that file: the package is not importable here."""
    tree = ast.parse((HERE / "gateway" / "build_info.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "REQUEST_PATH" for t in node.targets
        ):
            return [f"{name.replace('.', '/')}.py" for name in ast.literal_eval(node.value)]
    raise SystemExit("gateway/build_info.py has no REQUEST_PATH literal")


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

        self.distribution.ext_modules = mypycify(request_path(), opt_level="3", debug_level="1")
        super().finalize_options()


# the placeholder tells setuptools the wheel is platform-specific; the command fills in the rest
setup(
    ext_modules=[Extension("gateway.pipeline", sources=[])] if wanted() else [],
    cmdclass={"build_ext": BuildRequestPath},
)
