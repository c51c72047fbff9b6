"""`vgate check-config` run as a user would, on a config with a `lifecycle` section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]  # the repository


def check(tmp_path: Path, lifecycle: dict) -> subprocess.CompletedProcess:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "later.yaml").write_text(
        yaml.safe_dump({"tenant": "not-yet-created", "roles": {"view": {"groups": ["devs"]}}})
    )
    config = {
        "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["vgate"]}]},
        "policies": str(tmp_path / "policies"),
        "lifecycle": lifecycle,
    }
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(tmp_path / "vgate.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
