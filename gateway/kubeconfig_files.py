"""The kubeconfig files kubectl reads, and their documents as mappings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def kubeconfig_paths(explicit: Path | None = None) -> list[Path]:
    """The files kubectl would read: `--kubeconfig`, else `$KUBECONFIG`, else ~/.kube/config."""
    if explicit is not None:
        return [explicit]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [Path.home() / ".kube" / "config"]


def named_entries(doc: Any, section: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, body) of each well-formed entry of `clusters`, `users` or `contexts`; entries of
    another shape are skipped, as kubectl would refuse them anyway."""
    if not isinstance(doc, dict) or not isinstance(doc.get(section), list):
        return
    body_key = section.removesuffix("s")
    for entry in doc[section]:
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get(body_key), dict)
        ):
            yield entry["name"], entry[body_key]
