"""Regenerate `proto_schema.json` from Kubernetes' generated.proto files (a dev tool).

    python -m tests.fakekube.protogen DIR   # DIR holds the .proto files of k8s.io/api
                                            # (core, apps, authentication, authorization v1)
                                            # and k8s.io/apimachinery (meta/v1, intstr,
                                            # resource, runtime)

Only messages reachable from ROOTS are kept. Field entry: [number, name, label, type] with
label "opt" | "rep" | "map"; a map's type is "keytype,valuetype".
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOTS = (
    "k8s.io.api.core.v1.Pod", "k8s.io.api.core.v1.ConfigMap", "k8s.io.api.core.v1.Secret",
    "k8s.io.api.core.v1.Namespace", "k8s.io.api.core.v1.ServiceAccount",
    "k8s.io.api.core.v1.Service", "k8s.io.api.apps.v1.Deployment",
    "k8s.io.api.authentication.v1.SelfSubjectReview",
    "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
    "k8s.io.api.authorization.v1.SelfSubjectRulesReview",
    "k8s.io.api.authorization.v1.SubjectAccessReview",
    "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
)
SCALARS = {"string", "bytes", "bool", "int32", "int64", "double", "float", "uint32", "uint64"}
_MSG = re.compile(r"^message (\w+) \{")
_FIELD = re.compile(r"^\s+(optional|repeated) ([\w.]+) (\w+) = (\d+);")
_MAP = re.compile(r"^\s+map<([\w.]+), ([\w.]+)> (\w+) = (\d+);")


def _qualify(pkg: str, typ: str) -> str:
    if typ in SCALARS:
        return typ
    return typ.lstrip(".") if "." in typ else f"{pkg}.{typ}"


def parse(directory: Path) -> dict[str, list[list[object]]]:
    messages: dict[str, list[list[object]]] = {}
    for path in sorted(directory.glob("*.proto")):
        pkg, current = "", None
        for line in path.read_text().splitlines():
            if line.startswith("package "):
                pkg = line.split()[1].rstrip(";")
            elif m := _MSG.match(line):
                current = f"{pkg}.{m.group(1)}"
                messages[current] = []
            elif current and (m := _FIELD.match(line)):
                label = "opt" if m.group(1) == "optional" else "rep"
                messages[current].append(
                    [int(m.group(4)), m.group(3), label, _qualify(pkg, m.group(2))])
            elif current and (m := _MAP.match(line)):
                kv = f"{_qualify(pkg, m.group(1))},{_qualify(pkg, m.group(2))}"
                messages[current].append([int(m.group(4)), m.group(3), "map", kv])
    return messages


def reachable(messages: dict[str, list[list[object]]]) -> dict[str, list[list[object]]]:
    keep: dict[str, list[list[object]]] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep or name not in messages:
            continue
        keep[name] = messages[name]
        for _, _, _, typ in messages[name]:
            todo += [t for t in str(typ).split(",") if t not in SCALARS]
    return dict(sorted(keep.items()))


def main() -> None:
    out = Path(__file__).with_name("proto_schema.json")
    schema = reachable(parse(Path(sys.argv[1])))
    out.write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{out}: {len(schema)} messages")


if __name__ == "__main__":
    main()
