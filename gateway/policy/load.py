"""Load every policy file in a folder, reporting problems with file and line."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.config.load import validation_problems
from gateway.config.source import LocatedError, Problem, read_yaml
from gateway.policy.model import PolicyFile


@dataclass(frozen=True)
class LoadedPolicy:
    policy: PolicyFile
    file: str
    role_lines: dict[str, int]
    forward_line: int = 0


def policy_files(directory: Path) -> list[Path]:
    """The policy files in `directory`: `*.yaml` and `*.yml`, sorted. A dangling symlink is
    no file (a ConfigMap volume has them for a moment while it swaps `..data`)."""
    files = [*directory.glob("*.yaml"), *directory.glob("*.yml")]
    return sorted(p for p in files if not (p.is_symlink() and not p.exists()))


def load_policies(
    directory: Path,
    known_tenants: Iterable[str] | None = None,
    known_roles: Iterable[str] | None = None,
) -> tuple[list[LoadedPolicy], list[Problem]]:
    """Parse `*.yaml`/`*.yml` in `directory`; also flag unknown tenants, unknown roles (when
    `known_roles` is given) and duplicate rules, each with file and line."""
    loaded: list[LoadedPolicy] = []
    problems: list[Problem] = []
    files = policy_files(directory)
    known = set(known_tenants) if known_tenants is not None else None
    roles_known = set(known_roles) if known_roles is not None else None
    seen_roles: dict[tuple[str, str], str] = {}
    seen_modes: dict[str, str] = {}
    for path in files:
        try:
            doc = read_yaml(path)
        except LocatedError as exc:
            problems.append(exc.problem)
            continue
        except (OSError, ValueError) as exc:
            problems.append(Problem(str(path), None, "", str(exc)))
            continue
        if doc.data in ({}, None):
            continue
        try:
            policy = PolicyFile.model_validate(doc.data)
        except ValidationError as exc:
            problems.extend(validation_problems(doc, exc))
            continue
        if known is not None and policy.tenant != "*" and policy.tenant not in known:
            problems.append(doc.problem(("tenant",), f"unknown tenant {policy.tenant!r}"))
        for role in policy.roles:
            if roles_known is not None and role not in roles_known:
                problems.append(
                    doc.problem(
                        ("roles", role),
                        f"unknown role {role!r} (known: {', '.join(sorted(roles_known))})",
                    )
                )
            key = (policy.tenant, role)
            where = f"{path}:{doc.line_of(('roles', role))}"
            if key in seen_roles:
                problems.append(
                    doc.problem(
                        ("roles", role),
                        f"role {role!r} for tenant {policy.tenant!r} "
                        f"is already defined at {seen_roles[key]}",
                    )
                )
            seen_roles[key] = where
        forward_key = (
            ("forward_groups",) if policy.forward_groups else ("forward_directory_groups",)
        )
        forward_line = doc.line_of(forward_key) or 0
        if policy.forward_groups is not None and "mode" in policy.forward_groups.model_fields_set:
            if policy.tenant in seen_modes:
                problems.append(
                    doc.problem(
                        (*forward_key, "mode"),
                        f"forward_groups.mode for tenant "
                        f"{policy.tenant!r} is already set at {seen_modes[policy.tenant]}",
                    )
                )
            seen_modes[policy.tenant] = f"{path}:{forward_line}"
        loaded.append(
            LoadedPolicy(
                policy,
                str(path),
                {role: doc.line_of(("roles", role)) or 0 for role in policy.roles},
                forward_line,
            )
        )
    return loaded, problems
