"""Named idempotent steps and the `Provisioner` interface that supplies them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.lifecycle.model import RouteInfo, TenantSpec
from gateway.lifecycle.versions import KubernetesVersions


@dataclass(frozen=True)
class Step:
    """`done()` looks at the world; `run()` changes it. Running a done step is harmless."""

    name: str
    done: Callable[[], Awaitable[bool]]
    run: Callable[[], Awaitable[None]]
    # run() only waits for the world (changes nothing): the reconciler abandons it when the
    # tenant's spec changes meanwhile (a delete or pause need not wait out a ready timeout)
    waits: bool = False


class StepFailed(Exception):
    """A step could not complete (yet); the message is shown as the tenant's last error."""


class Provisioner(Protocol):
    kind: str

    def up(self, spec: TenantSpec) -> list[Step]:
        """Steps that make the tenant's cluster exist, run, and trust the gateway."""

    def pause(self, spec: TenantSpec) -> list[Step]:
        """Steps that stop the control plane but keep its data."""

    def down(self, spec: TenantSpec) -> list[Step]:
        """Steps that remove everything the tenant owns, and nothing else."""

    def route(self, spec: TenantSpec) -> RouteInfo:
        """Where and with which credential files the gateway reaches this tenant."""

    def versions(self) -> KubernetesVersions:
        """The Kubernetes versions this provisioner can run now."""

    async def served_version(self, spec: TenantSpec) -> str:
        """The version the tenant's running API server reports (like "v1.28.7")."""
