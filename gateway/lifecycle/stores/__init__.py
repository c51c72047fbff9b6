"""Where tenant records live: the `TenantStore` protocol, SQLite, and Kubernetes objects."""
