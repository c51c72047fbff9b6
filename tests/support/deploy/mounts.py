"""Lay out the files the gateway pod would see, from the rendered Deployment's volumes.

Each volumeMount becomes a folder under `root`; ConfigMaps rendered by the chart bring their
real data, Secrets and foreign ConfigMaps a placeholder per projected key. The gateway config's
absolute paths are then re-rooted, so `load_config` proves every *_file points at a mount.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.deploy.chart import Rendered


def _items(source: dict[str, Any]) -> list[str]:
    return [item["path"] for item in source.get("items", [])]


def materialize(rendered: Rendered, root: Path) -> Path:
    """Write the pod's files under `root`; return the re-rooted vgate.yaml path."""
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    chart_configmaps = {
        c["metadata"]["name"]: c.get("data") or {} for c in rendered.all("ConfigMap")
    }
    for mount in pod["containers"][0]["volumeMounts"]:
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        files: dict[str, str] = {}
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            if name in chart_configmaps and not volume["configMap"].get("items"):
                files = dict(chart_configmaps[name])
            else:
                files = {p: "-----BEGIN CERTIFICATE-----\n" for p in _items(volume["configMap"])}
        elif "secret" in volume:
            files = {p: "placeholder" for p in _items(volume["secret"])}
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                kind = next(iter(source))
                spec = source[kind]
                if kind == "configMap" and spec["name"] in chart_configmaps and "items" not in spec:
                    files.update(chart_configmaps[spec["name"]])
                else:
                    files.update({p: "placeholder" for p in _items(spec)})
        for path, text in files.items():
            (folder / path).write_text(text)
    config = root / "etc/vgate/config/vgate.yaml"
    text = config.read_text()
    for prefix in ("/etc/vgate/", "/var/lib/vgate", "/run/vgate/"):
        text = text.replace(prefix, str(root) + prefix)
    config.write_text(text)
    return config
