"""Run a real vgate gateway inside the test process, on its own event loop thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import yaml

from gateway.config import load_config
from gateway.serve import RunningGateway, build_pipeline


class GatewayThread:
    """Writes `config` (a dict) to `workdir/vgate.yaml`, loads it like `vgate serve` does,
    and serves on 127.0.0.1 with an ephemeral port (and the metrics listener on another:
    `metrics_url`)."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {"listen": {"host": "127.0.0.1", "port": 0, "metrics_port": 0}, **config}
        self.config_file = self.workdir / "vgate.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.config = load_config(self.config_file)
        self.loop = asyncio.new_event_loop()
        self.running: RunningGateway | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> GatewayThread:
        self._thread.start()
        self.running = RunningGateway(self.config, build_pipeline(self.config))
        asyncio.run_coroutine_threadsafe(self.running.start(), self.loop).result(15)
        return self

    @property
    def gateway(self):
        assert self.running is not None
        return self.running.pipeline

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.port

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The metrics listener (plain HTTP, loopback)."""
        assert self.running is not None and self.running.metrics_port is not None
        return f"http://127.0.0.1:{self.running.metrics_port}"

    def call(self, fn, *args):
        """Run `fn(*args)` on the gateway's loop thread and return its result."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stop(self, grace: float = 1.0) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(grace), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def crafted_config(
    workdir: Path,
    issuer: str,
    upstream_port: int,
    tenants: tuple[str, ...],
    policies: dict[str, dict],
    *,
    tenant_options: dict | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A gateway config for tests against a local issuer (username from `email`) and one
    local plain-HTTP upstream serving every tenant: the policy files are written to
    `workdir/policies`, the tenant credential to `workdir/token`; `sections` are added."""
    folder = Path(workdir) / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in policies.items():
        (folder / name).write_text(yaml.safe_dump(doc))
    (Path(workdir) / "token").write_text("upstream-secret\n")
    return {
        "routing": {"path_prefix": "/clusters"},
        "oidc": {
            "issuers": [{"issuer": issuer, "audiences": ["vgate"], "username_claim": "email"}]
        },
        "policies": str(folder),
        "audit": {"file": str(Path(workdir) / "audit.log")},
        "tenants": [
            {
                "name": t,
                "upstream": f"http://127.0.0.1:{upstream_port}",
                "token_file": str(Path(workdir) / "token"),
                **(tenant_options or {}),
            }
            for t in tenants
        ],
        **sections,
    }


def viewer_config(
    workdir: Path,
    issuer: str,
    upstreams: dict[str, str],
    *,
    ca_file: Path | None = None,
    token: str = "upstream-secret",
    **sections: Any,
) -> dict[str, Any]:
    """A gateway config for tests against stand-in upstreams: group `developers` is `view`
    in every tenant (username from `email`), each tenant name maps to its upstream URL
    (`https://` ones trust `ca_file`), the tenant credential `token` is in `workdir/token`;
    `sections` are added (`upstream`, `limits`, …)."""
    folder = Path(workdir) / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    (Path(workdir) / "token").write_text(token + "\n")
    return {
        "routing": {"base_domain": "k8s.test", "path_prefix": "/clusters"},
        "oidc": {
            "issuers": [{"issuer": issuer, "audiences": ["vgate"], "username_claim": "email"}]
        },
        "policies": str(folder),
        "audit": {"file": str(Path(workdir) / "audit.log")},
        "tenants": [
            {
                "name": name,
                "upstream": url,
                **({"ca_file": str(ca_file)} if ca_file and url.startswith("https:") else {}),
                "token_file": str(Path(workdir) / "token"),
            }
            for name, url in upstreams.items()
        ],
        **sections,
    }
