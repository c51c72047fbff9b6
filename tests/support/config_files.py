"""A valid gateway config file and policy, written into a folder for a test."""

from __future__ import annotations

from pathlib import Path

VALID = """\
listen: {host: 127.0.0.1, port: 8443}
routing:
  base_domain: k8s.example.com
  path_prefix: /clusters
oidc:
  issuers:
    - issuer: https://idp.example.com
      audiences: [vgate]
      username_claim: email
      username_prefix: "oidc:"
      groups_prefix: "oidc:"
      algorithms: [RS256, ES256]
policies: policies
tenants:
  - name: tenant1
    upstream: https://10.0.0.10:443
    token_file: secrets/tenant1.token
"""

POLICY = "tenant: tenant1\nroles:\n  view: {groups: [oidc:developers]}\n"


def make_config(folder: Path, text: str = VALID, *, policy: str | None = POLICY) -> Path:
    (folder / "secrets").mkdir(parents=True, exist_ok=True)
    (folder / "secrets" / "tenant1.token").write_text("tenant1-token\n")
    (folder / "policies").mkdir(exist_ok=True)
    if policy is not None:
        (folder / "policies" / "tenant1.yaml").write_text(policy)
    path = folder / "vgate.yaml"
    path.write_text(text)
    return path
