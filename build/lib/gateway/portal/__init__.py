"""The SSO web portal: sign in at the company IdP, see your tenants and roles, take a
kubeconfig (or a paste-ready command) whose user is the `vgate login` exec plugin."""

from gateway.portal.access import TenantAccess, TenantRole, policy_access
from gateway.portal.app import build_portal

__all__ = ["TenantAccess", "TenantRole", "build_portal", "policy_access"]
