"""Live configuration: policy files and static tenants change on a running gateway.

Every process that serves (and the master of `workers: N`, for the workers it may have to
start again) looks at the files once per `reload.poll_seconds` — the config file and each
policy file by device, inode, mtime and size, after following symlinks, so a ConfigMap
volume's `..data` swap counts as a change like an edit in place — and at once on SIGHUP.
A change is read, validated and only then swapped in; a file that does not validate keeps
the last good configuration, logs one line and counts `result="error"`. Files that change
while they are read are read again at the next look. The config file is read and validated
again only when it changed itself: a policy edit costs the policy files alone, however many
static tenants the config file lists.

What reloads: the policy files (and the `policies` path), and `tenants` (static routes:
added, changed, removed). Everything else in the config file is read at start only; a
change to it is named in the log as needing a restart, and the running values stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.metrics import Metrics
from gateway.policy.load import LoadedPolicy, load_policies, policy_files
from gateway.registry import Upstream, upstream_from_config

log = logging.getLogger("vgate.reload")

#: config sections a running gateway takes over without a restart
LIVE_SECTIONS = ("policies", "tenants")

Stamp = tuple


@dataclass(frozen=True)
class Snapshot:
    """One validated configuration: the config, its policy files, and what they looked like."""

    config: GatewayConfig
    policies: list[LoadedPolicy]
    digest: str  # sha256 of what the policies and static tenants say (not of file bytes)
    stamp: Stamp  # the files as seen when they were read
    tenants_sha: str = ""  # sha256 of the static tenants alone (kept while the file is)
    loaded_at: float = field(default_factory=time.time)
    # static tenants whose route changed since the previous snapshot, built while reading
    upstreams: dict[str, Upstream] = field(default_factory=dict, compare=False)
    # config sections that changed in the file but need a restart (the running values stay)
    restart_needed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    """The files changed but do not validate: why, in one line."""

    problem: str
    stamp: Stamp
    policies: Path  # the policy directory the refused config names


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: a swapped `..data` is another inode
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def stamp(config_file: Path | None, policies: Path) -> Stamp:
    """What the config file and the policy files look like now (a few `stat` calls)."""
    files = policy_files(policies) if policies.is_dir() else []
    return (
        (str(config_file), _stat(config_file)) if config_file else None,
        str(policies),
        tuple((p.name, _stat(p)) for p in files),
    )


def tenants_digest(config: GatewayConfig) -> str:
    """The sha256 of what the static tenants say (read again only when the config file is)."""
    doc = [t.model_dump(mode="json") for t in config.tenants]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def digest(tenants_sha: str, policies: list[LoadedPolicy]) -> str:
    """The sha256 of what the live sections say: equal for files touched but not changed."""
    doc = {
        "tenants": tenants_sha,
        "policies": [[Path(p.file).name, p.policy.model_dump(mode="json")] for p in policies],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def first_load(config: GatewayConfig, config_file: Path | None) -> Snapshot:
    """The configuration to start with; ValueError listing every policy problem."""
    before = stamp(config_file, config.policies)
    policies, problems = load_policies(config.policies)
    if problems:
        raise ValueError("\n".join(str(p) for p in problems))
    tenants_sha = tenants_digest(config)
    return Snapshot(config, policies, digest(tenants_sha, policies), before, tenants_sha)


class ConfigSource:
    """Reads the configuration again when its files changed. Blocking (file reads, YAML,
    validation, TLS contexts of changed tenants): run it in a thread on a serving loop."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file

    def changed(self, current: Snapshot, refused: Refused | None) -> bool:
        """Do the files differ from the last ones read (good or refused)?"""
        if refused is not None:
            return stamp(self.config_file, refused.policies) != refused.stamp
        return stamp(self.config_file, current.config.policies) != current.stamp

    def read(self, current: Snapshot) -> Snapshot | Refused | None:
        """A new validated snapshot, why the files are refused, or None when they changed
        while being read (read again at the next look). The config file is read and validated
        again only when it changed: a policy edit costs the policy files alone, however many
        static tenants the config file lists."""
        config = current.config
        restart: tuple[str, ...] = ()
        tenants_sha = current.tenants_sha
        upstreams: dict[str, Upstream] = {}
        first = _stat(self.config_file) if self.config_file is not None else None
        if self.config_file is not None and first != _config_stat(current.stamp):
            try:
                loaded = load_config(self.config_file)
            except ConfigError as exc:
                return Refused(
                    _one_line(exc.problems),
                    stamp(self.config_file, config.policies),
                    config.policies,
                )
            restart = tuple(
                name
                for name in GatewayConfig.model_fields
                if name not in LIVE_SECTIONS and getattr(loaded, name) != getattr(config, name)
            )
            config = config.model_copy(update={k: getattr(loaded, k) for k in LIVE_SECTIONS})
            try:
                upstreams = self._changed_upstreams(current.config, config)
            except (OSError, ValueError) as exc:
                return Refused(
                    f"tenants: {exc}", stamp(self.config_file, config.policies), config.policies
                )
            tenants_sha = tenants_digest(config)
        before = stamp(self.config_file, config.policies)
        if not config.policies.is_dir():
            return Refused(f"policy directory {config.policies} not found", before, config.policies)
        policies, problems = load_policies(config.policies)
        if problems:
            return Refused(_one_line(problems), before, config.policies)
        after = stamp(self.config_file, config.policies)
        if after != before or (first is not None and after[0][1] != first):
            return None
        return Snapshot(
            config,
            policies,
            digest(tenants_sha, policies),
            before,
            tenants_sha,
            upstreams=upstreams,
            restart_needed=restart,
        )

    @staticmethod
    def _changed_upstreams(old: GatewayConfig, new: GatewayConfig) -> dict[str, Upstream]:
        before = {t.name: t for t in old.tenants}
        return {t.name: upstream_from_config(t) for t in new.tenants if before.get(t.name) != t}


def _config_stat(seen: Stamp) -> tuple[int, int, int, int] | None:
    """The config file's `stat` as `seen` recorded it (None when there is no file)."""
    return seen[0][1] if seen[0] is not None else None


def _one_line(problems: list) -> str:
    first = str(problems[0]).replace("\n", " ")
    return first + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


class Tracked:
    """The last good snapshot of one process, its generation (1 at start, +1 for every
    change swapped in) and the last refusal."""

    def __init__(self, snapshot: Snapshot, source: ConfigSource, generation: int = 1) -> None:
        self.current = snapshot
        self.source = source
        self.generation = generation
        self.refused: Refused | None = None

    def look(self, forced: bool = False) -> Snapshot | Refused | None:
        """Read the files if they changed (or `forced`); None: nothing to take. Blocking."""
        if not forced and not self.source.changed(self.current, self.refused):
            return None
        return self.source.read(self.current)

    def take(self, result: Snapshot | Refused | None) -> Snapshot | None:
        """Remember `result`; the previous snapshot when a new one, saying something else,
        is now current (the caller swaps it in)."""
        if result is None:
            return None
        if isinstance(result, Refused):
            self.refused = result
            return None
        self.refused = None
        old = self.current
        if result.digest == old.digest:  # touched, or changed and changed back
            self.current = Snapshot(
                old.config, old.policies, old.digest, result.stamp, old.tenants_sha, old.loaded_at
            )
            return None
        self.current = result
        self.generation += 1
        return old


class LiveConfig:
    """In a serving process: look for changes every `poll_seconds` (0: only on SIGHUP) and
    on `trigger()`, and hand each validated change to `apply(old, new)` on the loop (it
    returns what it did, for the log line)."""

    def __init__(
        self,
        tracked: Tracked,
        apply: Callable[[Snapshot, Snapshot], str],
        metrics: Metrics,
        *,
        poll_seconds: float,
        who: str,
    ) -> None:
        self.tracked = tracked
        self.apply = apply
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self.who = who
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._show()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def trigger(self) -> None:
        """SIGHUP: read the files now, changed or not."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds or None)
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.check(forced)
            except Exception:
                log.exception("%s: reading the configuration failed", self.who)

    async def check(self, forced: bool = False) -> None:
        """Read the files if they changed (or `forced`) and swap in what validates."""
        t = self.tracked
        result = await asyncio.to_thread(t.look, forced)
        if result is None:
            return  # unchanged, or changing while read (read again at the next look)
        if isinstance(result, Refused):
            self.metrics.config_reloads.labels("error").inc()
            if forced or t.refused is None or t.refused.problem != result.problem:
                log.error(
                    "%s: configuration not reloaded, keeping generation %d (sha256 %s): %s",
                    self.who,
                    t.generation,
                    t.current.digest[:16],
                    result.problem,
                )
            t.take(result)
            return
        self.metrics.config_reloads.labels("ok").inc()
        if result.restart_needed:
            log.warning(
                "%s: config file changes to %s need a restart; running with the "
                "values read at start",
                self.who,
                ", ".join(result.restart_needed),
            )
        old = t.take(result)
        if old is None:
            log.info(
                "%s: configuration read, nothing changed (generation %d)", self.who, t.generation
            )
            return
        effect = self.apply(old, result)
        self._show()
        log.info(
            "%s: configuration reloaded: generation %d (sha256 %s), %d policy files%s",
            self.who,
            t.generation,
            result.digest[:16],
            len(result.policies),
            f"; {effect}" if effect else "",
        )

    def _show(self) -> None:
        m, t = self.metrics, self.tracked
        m.policy_generation.set(t.generation)
        m.policy_hash.clear()
        m.policy_hash.labels(t.current.digest[:16]).set(1)
        m.policy_loaded.set(t.current.loaded_at)

    def notes(self) -> list[str]:
        """For the verbose readiness answer."""
        t = self.tracked
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t.current.loaded_at))
        lines = [
            f"policies: generation {t.generation}, sha256 {t.current.digest[:16]}, read at {at}"
        ]
        if t.refused is not None:
            lines.append(f"policies: changed files refused, last good kept: {t.refused.problem}")
        return lines
