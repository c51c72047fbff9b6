"""Step 4 of the request path: (identity, tenant) → Grant or Deny, deny by default.

Also here: the nested-impersonation check (`nested`, `kubectl --as` put to the tenant as
SubjectAccessReviews) and `vgate policy explain` (`explain`)."""

from gateway.policy.engine import PolicyEngine
from gateway.policy.load import load_policies

__all__ = ["PolicyEngine", "load_policies"]
