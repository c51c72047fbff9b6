"""Fair sharing: per user, per tenant and global limits on request rate and open streams
(the `limit` step of the request path, after authorize)."""

from gateway.config.model import RateLimits
from gateway.limits.limiter import Held, Limiter, Refusal
from gateway.limits.table import BucketTable


def limit_table(config: RateLimits, workers: int) -> BucketTable | None:
    """The table every worker shares (create it before forking), or None when no limit is
    configured (then the request path has no limit step at all)."""
    if not config.configured:
        return None
    return BucketTable(config.max_keys, workers=workers, idle_seconds=config.idle_seconds)


__all__ = ["BucketTable", "Held", "Limiter", "Refusal", "limit_table"]
