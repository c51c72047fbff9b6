"""Step 4 of the request path: (identity, tenant) → Grant or Deny, deny by default."""

from gateway.policy.engine import PolicyEngine
from gateway.policy.load import load_policies

__all__ = ["PolicyEngine", "load_policies"]
