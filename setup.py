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

from setuptools import setup

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


def compiled_extensions() -> list:
    """The request path as mypyc extensions when VGATE_COMPILE=1, else none."""
    wanted = os.environ.get("VGATE_COMPILE", "").strip().lower()
    if wanted in ("", "0", "false", "no"):
        return []
    if wanted not in ("1", "true", "yes"):
        raise SystemExit(f"VGATE_COMPILE={wanted!r}: expected 1 (compile) or 0 (plain Python)")
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    return mypycify(request_path(), opt_level="3", debug_level="1")


setup(ext_modules=compiled_extensions())
