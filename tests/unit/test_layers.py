"""The package's rooms import each other only downwards.

Read from the import statements themselves (an `ast` walk, type-checking imports included):
the HTTP layer imports no step; no step imports the pipeline or the composition root; the
ground floor imports nothing above it; the lifecycle manager and the request path meet only
at the registry and the policy engine's roles hook; and no two rooms import each other,
directly or around a longer cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"

#: the rooms of the request path, in order
STEPS = {
    "route",
    "authn",
    "directory",
    "policy",
    "limits",
    "rewrite",
    "forward",
    "record",
    "sessions",
}
#: what every room may build on
GROUND = {
    "build_info",
    "identity",
    "flow",
    "metrics",
    "names",
    "config",
    "registry",
    "credentials",
    "private_file",
    "http",
    "tenant_api",
    "streams",
}
#: who may import what, beyond the ground floor (a room always may import itself)
ALLOWED: dict[str, set[str]] = {
    # the ground floor
    "http": {"private_file"},
    "names": set(),
    "identity": {"names"},  # the name gate (gateway.names.kube)
    "metrics": set(),
    "build_info": set(),  # how this installation was built (compiled or not)
    "private_file": set(),
    "config": {"names"},
    "credentials": {"private_file"},
    "registry": {"config", "credentials", "http"},  # http.tls_object: the TLS contexts
    "tenant_api": {"registry"},  # the gateway's own calls to tenants (reviews)
    "flow": {
        "http",
        "identity",
        "registry",
        "directory",  # type-only: Membership
        "streams",
    },  # type-only: the stream plan and the recording of an upgrade
    "streams": {"http"},  # exec/attach/port-forward codecs and bridges (type-only: headers)
    # the steps: each may use the values of the steps before it
    "route": set(),
    "authn": {"config", "identity"},
    "directory": {"config", "identity", "metrics", "names"},
    "policy": {"directory", "rewrite"},  # `policy explain` prints the headers rewrite sends
    "limits": set(),
    "rewrite": {"authn", "identity"},  # the WebSocket bearer-protocol rule
    "forward": {"flow"},
    "record": {"flow"},
    "sessions": set(),  # exec/attach recordings (config, flow, streams: the ground floor)
    # above the steps
    "endpoints": {"http", "metrics"},
    "reload": {"policy"},  # live policy files and static tenants
    "workers": set(),  # the master of `workers: N` and the board it shares
    "pipeline": STEPS | {"endpoints"},
    "portal": {"authn", "directory", "policy", "login"},
    "login": {"kubeconfig_files"},
    "kubeconfig_files": set(),
    "lifecycle": {"login", "kubeconfig_files"},
    "quickstart": {"lifecycle", "login", "kubeconfig_files", "serve"},  # it runs a gateway
    "serve": STEPS | {"pipeline", "endpoints", "portal", "lifecycle", "reload", "workers"},
    "cli": {
        "serve",
        "policy",
        "directory",
        "lifecycle",
        "login",
        "portal",
        "quickstart",
        "kubeconfig_files",
        "sessions",
    },
    "__main__": {"cli"},
    "__init__": set(),
}


def _room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports() -> dict[str, set[tuple[str, str]]]:
    """room → {(imported room, where)} for every `gateway.*` import in the package."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        room = _room(path)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "gateway" or len(parts) < 2:
                    continue
                target = parts[1]
                if target != room:
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                    found.setdefault(room, set()).add((target, where))
    return found


IMPORTS = _imports()


def test_every_room_is_known() -> None:
    rooms = {_room(p) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(ALLOWED), f"new rooms need a place in the layers: {rooms - set(ALLOWED)}"


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_imports_only_go_down(room: str) -> None:
    allowed = ALLOWED[room] | GROUND if room not in GROUND else ALLOWED[room]
    wrong = sorted(
        f"{room} → {target} ({where})"
        for target, where in IMPORTS.get(room, ())
        if target not in allowed
    )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_http_layer_imports_no_step() -> None:
    above = STEPS | {"pipeline", "serve", "endpoints", "flow"}
    assert not {t for t, _ in IMPORTS.get("http", ())} & above


def test_no_cycles_between_rooms() -> None:
    graph = {room: {t for t, _ in targets} for room, targets in IMPORTS.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(room: str) -> None:
        if room in visiting:
            cycle = [*visiting[visiting.index(room) :], room]
            raise AssertionError("import cycle: " + " → ".join(cycle))
        if room in done:
            return
        visiting.append(room)
        for target in sorted(graph.get(room, ())):
            visit(target)
        visiting.pop()
        done.add(room)

    for room in sorted(graph):
        visit(room)
