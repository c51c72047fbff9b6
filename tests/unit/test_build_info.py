"""Which build runs is said truthfully: the request path (`gateway.build_info.REQUEST_PATH`,
what setup.py compiles with mypyc) is compiled as a whole or not at all, and `vgate --version`,
the start-up line and the `vgate_build_info` gauge name that build.

This tier also runs against a compiled copy (tests/e2e/test_compiled_build.py), so the
expected build is read off the modules themselves; in a plain checkout (no extension modules
under gateway/) it must be "interpreted"."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import re
import subprocess
import sys
from pathlib import Path

import httpx

import gateway
from gateway.build_info import REQUEST_PATH, request_path_build
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, viewer_config

PACKAGE = Path(gateway.__file__).resolve().parent
_NATIVE = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _kind(module: str) -> str:
    origin = importlib.import_module(module).__file__ or ""
    return "compiled" if origin.endswith(_NATIVE) else "interpreted"


def expected_build() -> str:
    """What every request-path module is (asserting they agree), which an installation
    without extension modules under gateway/ must say is "interpreted"."""
    kinds = {name: _kind(name) for name in REQUEST_PATH}
    assert len(set(kinds.values())) == 1, f"a partly compiled request path: {kinds}"
    kind = kinds[REQUEST_PATH[0]]
    if not any(p.name.endswith(_NATIVE) for p in PACKAGE.rglob("*")):
        assert kind == "interpreted"
    return kind


def test_the_request_path_names_existing_modules_once() -> None:
    assert len(set(REQUEST_PATH)) == len(REQUEST_PATH)
    for name in REQUEST_PATH:
        assert name.startswith("gateway.")
        assert (PACKAGE.parent / f"{name.replace('.', '/')}.py").is_file(), name


def test_setup_py_compiles_exactly_the_request_path() -> None:
    """setup.py reads the list from gateway/build_info.py (without importing the package)."""
    setup_py = PACKAGE.parent / "setup.py"
    tree = ast.parse(setup_py.read_text())
    namespace: dict = {"__file__": str(setup_py)}
    helper = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "request_path"
    )
    imports = [
        n
        for n in tree.body
        if isinstance(n, ast.Import | ast.ImportFrom) and getattr(n, "module", "") != "setuptools"
    ]
    preamble = [n for n in tree.body if isinstance(n, ast.Assign)]  # HERE
    exec(compile(ast.Module([*imports, *preamble, helper], []), str(setup_py), "exec"), namespace)
    assert namespace["request_path"]() == [f"{n.replace('.', '/')}.py" for n in REQUEST_PATH]


def test_request_path_build_names_what_runs() -> None:
    assert request_path_build() == expected_build()


def test_vgate_version_says_the_build() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.strip() == f"vgate {gateway.__version__} (request path {expected_build()})"


def test_the_build_info_gauge_is_served(tmp_path: Path, issuer: CraftingIssuer) -> None:
    config = viewer_config(tmp_path, issuer.issuer, {"t": "http://127.0.0.1:9"})
    with GatewayThread(tmp_path, config) as gw:
        text = httpx.get(f"{gw.metrics_url}/metrics", timeout=10).text
    [line] = [x for x in text.splitlines() if x.startswith("vgate_build_info{")]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    assert labels == {"version": gateway.__version__, "request_path": expected_build()}
    assert line.endswith(" 1.0")
