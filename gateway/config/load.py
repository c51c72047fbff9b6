"""Read a config file into a `GatewayConfig`, collecting every problem with its location."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from gateway.config.model import GatewayConfig
from gateway.config.source import LocatedDocument, Problem, read_yaml


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


def _file_problems(doc: LocatedDocument, cfg: GatewayConfig) -> list[Problem]:
    problems = []

    def need(path: Path | None, where: tuple) -> None:
        if path is not None and not path.is_file():
            problems.append(doc.problem(where, f"file not found: {path}"))

    if cfg.tls:
        need(cfg.tls.cert_file, ("tls", "cert_file"))
        need(cfg.tls.key_file, ("tls", "key_file"))
        need(cfg.tls.client_ca_file, ("tls", "client_ca_file"))
    for i, issuer in enumerate(cfg.oidc.issuers):
        need(issuer.ca_file, ("oidc", "issuers", i, "ca_file"))
    for i, tenant in enumerate(cfg.tenants):
        for field in ("ca_file", "token_file", "client_cert_file", "client_key_file"):
            need(getattr(tenant, field), ("tenants", i, field))
    if not cfg.policies.is_dir():
        problems.append(doc.problem(("policies",), f"policy directory not found: {cfg.policies}"))
    return problems


def load_config(path: Path) -> GatewayConfig:
    """Parse and validate; raise `ConfigError` listing every problem found."""
    path = Path(path)
    try:
        doc = read_yaml(path)
    except (OSError, ValueError) as exc:
        raise ConfigError([Problem(str(path), None, "", str(exc))]) from None
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.problem((), "the config must be a YAML mapping")])
    try:
        cfg = GatewayConfig.model_validate(doc.data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(validation_problems(doc, exc)) from None
    problems = _file_problems(doc, cfg)
    if problems:
        raise ConfigError(problems)
    return cfg
