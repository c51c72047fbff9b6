"""The lifecycle manager: tenants' virtual clusters created, paused, woken, upgraded, deleted.

It meets the rest of the gateway at two points, both handed to `LifecycleRuntime` by the
server: the route registry (`gateway.registry`: the lifecycle puts each tenant's route and
credential files there, the proxy reads them) and a roles hook (`on_roles`: each tenant's
stored admin and view groups, which the server gives to the policy engine). Neither the
proxy nor the policy engine imports the lifecycle, and it imports neither.

Top level: the records (`model`, `versions`), the reconciler and its `steps`, the
`operations` behind the admin API and `vgate tenant`, and the `runtime` inside `vgate serve`.
Below: `stores/` (where records live: the protocol, SQLite, Kubernetes objects),
`provisioning/` (how a tenant's cluster is made: local processes, or vcluster with helm),
`credentials/` (the gateway's per-tenant credential: files, Secrets, its in-cluster
identity and token).
"""
