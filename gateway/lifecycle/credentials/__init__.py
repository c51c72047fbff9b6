"""The gateway's per-tenant credential: its files, the Secrets shared between replicas, and
its identity and token inside the tenant's cluster."""
