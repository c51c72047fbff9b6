"""Inside a tenant's cluster: the gateway's ServiceAccount, the role bindings, its token.

The ServiceAccount `vgate-system/vgate-gateway` may impersonate (`impersonator_rules`), ask
the reviews the gateway makes, and mint tokens for itself only, so the cluster-admin
credential (`vc-<name>`) is needed just for the bootstrap and when the token was lost.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.kube import KubeAPI, Manifest
from gateway.lifecycle.steps import Step, StepFailed

NAMESPACE = "vgate-system"
SERVICE_ACCOUNT = "vgate-gateway"
IMPERSONATOR_ROLE = "vgate:impersonator"
ROLE_BINDINGS = {"cluster-admin": "cluster-admin", "admin": "admin", "edit": "edit", "view": "view"}
# the one extra the gateway may send: who asked, when nested impersonation (`kubectl --as`)
# is enabled; the plain path impersonates no extras (README "What leaves the gateway")
EXTRA_KEYS = ("vgate.io/original-user",)
MANAGED = {"app.kubernetes.io/managed-by": "vgate"}


def _meta(name: str, namespace: str | None = None) -> Manifest:
    meta: Manifest = {"name": name, "labels": dict(MANAGED)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def impersonator_rules() -> list[Manifest]:
    """What the gateway's credential in a tenant cluster needs (the README's recipe for a
    static tenant is the same ClusterRole):

    - impersonate any user and uid (users are not known in advance) and any group: the role
      groups `vgate:<role>`, the user's own groups a policy forwards (`forward_groups`) and
      the groups of `kubectl --as-group` are not known in advance either. Naming the role
      groups only would protect nothing — whoever may impersonate any user can become a
      privileged one; what the gateway sends is decided by its policies and its name gate
      (no `system:` name from the IdP or the directory);
    - impersonate the extras the gateway sends, each by key: RBAC matches an extra's key as
      the subresource of `userextras`, and `userextras` alone covers none;
    - create SubjectAccessReviews (nested impersonation asks the tenant whether the caller
      may be whom `kubectl --as` names) and TokenReviews (tenant-native tokens, when
      `token_passthrough` is on)."""
    return [
        {"apiGroups": [""], "resources": ["users", "groups"], "verbs": ["impersonate"]},
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["uids", *(f"userextras/{key}" for key in EXTRA_KEYS)],
            "verbs": ["impersonate"],
        },
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create"],
        },
    ]


def bootstrap_objects() -> list[Manifest]:
    """Everything the gateway needs inside a tenant cluster, in apply order."""
    objects: list[Manifest] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NAMESPACE)},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(SERVICE_ACCOUNT, NAMESPACE),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(IMPERSONATOR_ROLE),
            "rules": impersonator_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(IMPERSONATOR_ROLE),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": IMPERSONATOR_ROLE,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta("vgate:self-token", NAMESPACE),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token"],
                    "verbs": ["create"],
                    "resourceNames": [SERVICE_ACCOUNT],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta("vgate:self-token", NAMESPACE),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "vgate:self-token",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
            ],
        },
    ]
    for role, cluster_role in ROLE_BINDINGS.items():
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": _meta(f"vgate:{role}"),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": cluster_role,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Group",
                        "name": f"vgate:{role}",
                    }
                ],
            }
        )
    return objects


_COMPARED = ("rules", "roleRef", "subjects")


def _matches(live: Manifest | None, want: Manifest) -> bool:
    if live is None:
        return False
    return all(live.get(k) == want.get(k) for k in _COMPARED if k in want)


Connect = Callable[[], Awaitable[KubeAPI]]
ConnectToken = Callable[[str], Awaitable[KubeAPI]]


@dataclass
class TokenPolicy:
    seconds: int = 3600
    rotate_when_left: float = 0.5  # rotate when less than this fraction of the life is left


class Bootstrap:
    """The in-cluster steps shared by every provisioner.

    `admin()` opens a client with the tenant's cluster-admin credential (read from wherever
    the provisioner keeps it, used for one step and closed); `as_gateway(token)` opens one
    with the gateway's own token. `save_token`/`load_token` keep the token where the
    provisioner keeps secrets (a host Secret, or a file). With `shared`, the token and CA
    are also published for the other gateway replicas (the kubernetes tenant store).
    """

    def __init__(
        self,
        *,
        tenant: str,
        admin: Connect,
        as_gateway: ConnectToken,
        files: CredentialFiles,
        load_token: Callable[[], Awaitable[tuple[str, float] | None]],
        save_token: Callable[[str, float], Awaitable[None]],
        ca: Callable[[], Awaitable[bytes]],
        policy: TokenPolicy,
        shared: CredentialSecrets | None = None,
    ) -> None:
        self.tenant = tenant
        self.admin = admin
        self.as_gateway = as_gateway
        self.files = files
        self.load_token = load_token
        self.save_token = save_token
        self.ca = ca
        self.policy = policy
        self.shared = shared

    def steps(self) -> list[Step]:
        return [
            Step("tenant-rbac", self._rbac_done, self._rbac_run),
            Step("gateway-token", self._token_done, self._token_run),
        ]

    async def served_version(self) -> str:
        """The version the tenant's API server reports, asked with the gateway's token."""
        saved = await self.load_token()
        if saved is None:
            raise StepFailed("the gateway has no token for this tenant yet")
        api = await self.as_gateway(saved[0])
        try:
            return await api.server_version()
        finally:
            await api.close()

    async def _rbac_done(self) -> bool:
        api = await self.admin()
        try:
            for obj in bootstrap_objects():
                meta = obj["metadata"]
                live = await api.get(
                    obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace")
                )
                if not _matches(live, obj):
                    return False
            return True
        finally:
            await api.close()

    async def _rbac_run(self) -> None:
        api = await self.admin()
        try:
            for obj in bootstrap_objects():
                await api.apply(obj)
        finally:
            await api.close()

    def _fresh(self, expiry: float) -> bool:
        return expiry - time.time() > self.policy.seconds * self.policy.rotate_when_left

    async def _token_done(self) -> bool:
        saved = await self.load_token()
        if saved is None or not self._fresh(saved[1]):
            return False
        token, files = saved[0].encode(), self.files
        if files.read(files.token_path(self.tenant)) != token:
            return False  # decided without reading the CA (a host Secret) at all
        ca = await self.ca()
        if files.read(files.ca_path(self.tenant)) != ca:
            return False
        if self.shared is not None and not await self.shared.matches(self.tenant, token, ca):
            return False
        return await self._accepted(saved[0])

    async def _accepted(self, token: str) -> bool:
        """False only when the tenant refuses the token (`PermissionError`, a 401: its
        ServiceAccount was deleted, the vcluster lost its data or signing key), so a new one
        is minted with the admin credential now rather than at half its life. Any other
        failure (the tenant down) is left to the steps after this one to report."""
        try:
            api = await self.as_gateway(token)
            try:
                await api.server_version()
            finally:
                await api.close()
        except PermissionError:
            return False
        except Exception:
            return True
        return True

    async def _token_run(self) -> None:
        saved = await self.load_token()
        token = expiry = None
        if saved is not None and saved[1] > time.time() + 30:
            try:  # the gateway renews its own token; no admin credential needed
                api = await self.as_gateway(saved[0])
                try:
                    token, expiry = await api.create_token(
                        NAMESPACE, SERVICE_ACCOUNT, self.policy.seconds
                    )
                finally:
                    await api.close()
            except Exception:
                token = None
        if token is None:
            api = await self.admin()
            try:
                token, expiry = await api.create_token(
                    NAMESPACE, SERVICE_ACCOUNT, self.policy.seconds
                )
            finally:
                await api.close()
        assert expiry is not None
        await self.save_token(token, expiry)
        ca = await self.ca()
        self.files.write(self.files.ca_path(self.tenant), ca)
        self.files.write(self.files.token_path(self.tenant), token.encode())
        if self.shared is not None:
            await self.shared.publish(self.tenant, token.encode(), ca)
