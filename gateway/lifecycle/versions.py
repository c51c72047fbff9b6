"""Which Kubernetes versions a provisioner can run: a tenant's `k8s_version` is checked
against them when it is created or upgraded, so an impossible version is refused at once
instead of failing a step forever."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

MINOR = re.compile(r"^1\.(0|[1-9][0-9]?)$")


def minor_of(version: str) -> str:
    """ "v1.31.4", "1.31.4" or "1.31" → "1.31" (ValueError for anything else)."""
    parts = version.strip().removeprefix("v").split(".")
    minor = ".".join(parts[:2])
    if (
        len(parts) > 3
        or not MINOR.fullmatch(minor)
        or (len(parts) == 3 and not parts[2].split("-")[0].isdigit())
    ):
        raise ValueError(f"{version!r} is not a Kubernetes version like 1.32")
    return minor


def minor_number(version: str) -> int:
    return int(minor_of(version).split(".")[1])


@dataclass(frozen=True)
class KubernetesVersions:
    """The minor versions a provisioner can run, each with where it comes from (an image
    tag, a binary), the one a tenant gets when none is asked for, and how to add others."""

    available: Mapping[str, str]
    default: str | None
    how_to_add: str = ""

    def problem(self, version: str) -> str | None:
        """Why `version` cannot run here, or None when it can."""
        if version in self.available:
            return None
        have = (
            ", ".join(
                f"{v} ({self.available[v]})" for v in sorted(self.available, key=minor_number)
            )
            or "none"
        )
        more = f"; {self.how_to_add}" if self.how_to_add else ""
        return f"Kubernetes {version} is not available here (available: {have}){more}"
