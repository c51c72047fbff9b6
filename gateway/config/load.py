"""Read a config file into a `GatewayConfig`, collecting every problem with its location."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from gateway.config.model import GatewayConfig
from gateway.config.source import LocatedDocument, LocatedError, Problem, read_yaml


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists each one with file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def validation_problems(doc: LocatedDocument, exc: ValidationError) -> list[Problem]:
    """Turn pydantic errors into located problems."""
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append(doc.problem(loc, msg))
    return out


_FILE_FIELDS = {
    ("tls",): ("cert_file", "key_file"),
    ("oidc", "issuers", "*"): ("ca_file",),
    ("tenants", "*"): ("ca_file", "token_file", "client_cert_file", "client_key_file"),
    ("portal",): ("client_secret_file", "cookie_secret_file", "ca_file"),
    ("ldap",): ("ca_file", "bind_password_file"),
}


def _sections(data: object, path: tuple) -> list[tuple[tuple, dict]]:
    """The mappings at `path` in raw data (`*` walks a list)."""
    found: list[tuple[tuple, object]] = [((), data)]
    for step in path:
        nxt: list[tuple[tuple, object]] = []
        for where, value in found:
            if step == "*" and isinstance(value, list):
                nxt += [((*where, i), v) for i, v in enumerate(value)]
            elif isinstance(value, dict) and step in value:
                nxt.append(((*where, step), value[step]))
        found = nxt
    return [(w, v) for w, v in found if isinstance(v, dict)]


def _raw_problems(doc: LocatedDocument, base: Path) -> list[Problem]:
    """Checks that need no valid schema: missing files, duplicate tenants (so that
    `check-config` reports them together with schema errors)."""
    problems = []
    for path, fields in _FILE_FIELDS.items():
        for where, section in _sections(doc.data, path):
            for field in fields:
                value = section.get(field)
                if isinstance(value, str) and value and not (base / value).is_file():
                    problems.append(doc.problem((*where, field), f"file not found: {base / value}"))
    policies = doc.data.get("policies", "policies") if isinstance(doc.data, dict) else None
    if isinstance(policies, str) and not (base / policies).is_dir():
        problems.append(
            doc.problem(("policies",), f"policy directory not found: {base / policies}")
        )
    seen: dict[str, int] = {}
    for where, tenant in _sections(doc.data, ("tenants", "*")):
        name = tenant.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                doc.problem(
                    (*where, "name"), f"tenant listed twice: {name} (first at line {seen[name]})"
                )
            )
        else:
            seen[name] = doc.line_of((*where, "name")) or 0
    return problems


def load_config(path: Path) -> GatewayConfig:
    """Parse and validate; raise `ConfigError` listing every problem found."""
    path = Path(path)
    try:
        doc = read_yaml(path)
    except LocatedError as exc:
        raise ConfigError([exc.problem]) from None
    except (OSError, ValueError) as exc:
        raise ConfigError([Problem(str(path), None, "", str(exc))]) from None
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.problem((), "the config must be a YAML mapping")])
    problems = _raw_problems(doc, path.parent)
    try:
        cfg = GatewayConfig.model_validate(doc.data, context={"base_dir": path.parent})
    except ValidationError as exc:
        problems = validation_problems(doc, exc) + problems
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line or 0))
    return cfg
