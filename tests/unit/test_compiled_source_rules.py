"""What mypyc compiles differently from CPython, kept out of the modules it compiles
(`gateway.build_info.REQUEST_PATH`), read from their source so the rule holds for code no
test happens to run.

One name bound by `except A as e` and `except B as e` in one function is one native variable
of type A in compiled code: binding a B to it raises TypeError instead of running the handler
(mypyc/mypyc#620; mypy accepts it). It turned a tenant's failed TokenReview into a 500 and an
unreachable HTTP/2 tenant into a TypeError. Each `except` clause of a function with others
binds a name of its own."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import gateway
from gateway.build_info import REQUEST_PATH

ROOT = Path(gateway.__file__).resolve().parents[1]
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _own_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """The nodes of `scope`'s body, not those of the functions and classes inside it."""
    for child in ast.iter_child_nodes(scope):
        yield child
        if not isinstance(child, _SCOPES):
            yield from _own_nodes(child)


def exception_names_rebound(source: str) -> list[str]:
    """`function:line name (types)` for each name that `except ... as` clauses of one
    function bind to different exception types."""
    found = []
    for scope in ast.walk(ast.parse(source)):
        if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        bound: dict[str, set[str]] = {}
        for node in _own_nodes(scope):
            if isinstance(node, ast.ExceptHandler) and node.name:
                kind = ast.unparse(node.type) if node.type else "BaseException"
                bound.setdefault(node.name, set()).add(kind)
        found += [
            f"{scope.name}:{scope.lineno} {name} ({', '.join(sorted(kinds))})"
            for name, kinds in bound.items()
            if len(kinds) > 1
        ]
    return found


def test_the_check_finds_a_rebound_exception_name() -> None:
    source = """
def f():
    try:
        pass
    except KeyError as exc:
        pass
    except (OSError, ValueError) as exc:
        pass
    def inner():
        try:
            pass
        except KeyError as exc:
            pass
    try:
        pass
    except KeyError as exc:
        pass
"""
    assert exception_names_rebound(source) == ["f:2 exc ((OSError, ValueError), KeyError)"]
    assert exception_names_rebound(source.replace("(OSError, ValueError) as exc", "OSError")) == []


def test_no_compiled_function_binds_one_name_to_two_exception_types() -> None:
    found = {
        name: rebound
        for name in REQUEST_PATH
        if (rebound := exception_names_rebound((ROOT / f"{name.replace('.', '/')}.py").read_text()))
    }
    assert found == {}
