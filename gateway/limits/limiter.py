"""Per user, per tenant and global limits on request rate and on open streams.

A request is admitted when the user's bucket (in that tenant), the tenant's and the
gateway's each have a token; a long-running request (watch, `logs -f`, exec, attach,
port-forward) also needs an open-stream slot at each level, held until it ends. Checks run
from the narrowest level up, so a user over their own limit spends nothing of their
tenant's budget, and a tenant over its limit nothing of the gateway's. What applies to a
user is worked out once per grant: their tenant's `user` limit, or, when a role of theirs
has its own, the most generous of those.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config.model import Limit, RateLimits
from gateway.http.status import status_body
from gateway.identity import Grant
from gateway.limits.table import BucketTable, key_hash

STREAM_RETRY_SECONDS = 5  # an open stream ends when its client says so: a guess
MAX_PLANS = 4096


@dataclass(frozen=True, slots=True)
class Refusal:
    """Over a limit: `reason` labels the metric, `message` tells the client (and the audit
    log) which limit, `retry_after` is in whole seconds; `body` and `headers` are the 429
    answer (a `TooManyRequests` Status with `details.retryAfterSeconds`, and `Retry-After`),
    which client-go waits out and retries."""

    reason: str
    message: str
    retry_after: int
    body: bytes = field(default=b"", repr=False)
    headers: tuple[tuple[bytes, bytes], ...] = ()

    @classmethod
    def of(cls, reason: str, message: str, retry_after: int) -> Refusal:
        body = status_body(429, message, "TooManyRequests", {"retryAfterSeconds": retry_after})
        return cls(reason, message, retry_after, body, ((b"Retry-After", b"%d" % retry_after),))


@dataclass(frozen=True, slots=True)
class _Level:
    level: str  # user | tenant | global
    key: int
    rate: float | None
    burst: float
    streams: int | None
    who: str
    # the refusals of this level, made once (by kind and retry seconds): refusing is the
    # flood's path and must stay cheap
    refusals: dict[tuple[str, int], Refusal] = field(default_factory=dict, compare=False)

    def refusal(self, kind: str, retry_after: int) -> Refusal:
        refusal = self.refusals.get((kind, retry_after))
        if refusal is None:
            if kind == "rate":
                message = (
                    f"rate limit: {self.who} may make {self.rate:g} requests per "
                    f"second (burst {self.burst:g}); retry later"
                )
            else:
                message = (
                    f"concurrency limit: {self.who} may keep {self.streams} watches, "
                    "log follows and exec/attach/port-forward sessions open at once"
                )
            refusal = Refusal.of(f"{self.level}_{kind}", message, retry_after)
            if len(self.refusals) < 64:
                self.refusals[(kind, retry_after)] = refusal
        return refusal


Held = tuple[tuple[int, int], ...]  # (key, slot) of each open-stream count taken


def most_generous(limits: list[Limit]) -> Limit:
    """One limit allowing what the most generous of `limits` allows, in each dimension."""
    rates = [x.requests_per_second for x in limits]
    streams = [x.concurrent_streams for x in limits]
    if None in rates:
        rate, burst = None, None
    else:
        rate, burst = max(r for r in rates if r is not None), max(x.bucket for x in limits)
    return Limit(
        requests_per_second=rate,
        burst=burst,
        concurrent_streams=None if None in streams else max(s for s in streams if s is not None),
    )


class Limiter:
    """Admits or refuses requests against the configured `RateLimits`."""

    def __init__(
        self, config: RateLimits, table: BucketTable, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.table = table
        self.clock = clock
        self._plans: dict[Grant, tuple[_Level, ...]] = {}

    def plan(self, grant: Grant) -> tuple[_Level, ...]:
        """The limited levels for requests with `grant`, narrowest first."""
        levels = self._plans.get(grant)
        if levels is None:
            levels = self._levels(grant)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[grant] = levels
        return levels

    def _levels(self, grant: Grant) -> tuple[_Level, ...]:
        cfg, tenant = self.config, grant.tenant
        own = cfg.tenants.get(tenant)
        user = (own.user if own and own.user else None) or cfg.user
        roles = {**cfg.roles, **(own.roles if own else {})}
        if grant.roles and any(r in roles for r in grant.roles):
            user = most_generous([roles.get(r, user) for r in grant.roles])
        candidates = [
            (
                "user",
                key_hash("user", tenant, grant.user),
                user,
                f'user "{grant.user}" on tenant "{tenant}"',
            ),
            (
                "tenant",
                key_hash("tenant", tenant),
                (own.tenant if own and own.tenant else None) or cfg.tenant,
                f'tenant "{tenant}"',
            ),
            ("global", key_hash("global"), cfg.global_, "the gateway"),
        ]
        return tuple(
            _Level(
                level,
                key,
                limit.requests_per_second,
                float(limit.bucket),
                limit.concurrent_streams,
                who,
            )
            for level, key, limit, who in candidates
            if not limit.unlimited
        )

    def admit(self, grant: Grant, long_running: bool) -> Refusal | Held | None:
        """None: go on; `Held`: go on and `release` it when the request ends; else why not."""
        levels = self.plan(grant)
        if not levels:
            return None
        now = self.clock()
        table = self.table
        taken: list[_Level] = []
        for level in levels:
            if level.rate is None:
                continue
            wait = table.take(level.key, level.rate, level.burst, now)
            if wait:
                for earlier in taken:
                    table.give_back(earlier.key, earlier.burst)
                return level.refusal("rate", max(1, math.ceil(wait)))
            taken.append(level)
        if not long_running:
            return None
        held: list[tuple[int, int]] = []
        for level in levels:
            if level.streams is None:
                continue
            slot = table.open_stream(level.key, level.streams, now)
            if slot == -2:
                self.release(tuple(held))
                return level.refusal("streams", STREAM_RETRY_SECONDS)
            if slot >= 0:
                held.append((level.key, slot))
        return tuple(held) or None

    def release(self, held: Held) -> None:
        """The request that held these stream counts has ended."""
        now = self.clock()
        for key, slot in held:
            self.table.close_stream(key, slot, now)
