"""A folder written the way the kubelet writes a ConfigMap volume: each version in its own
`..<timestamp>` folder, `..data` swapped to it atomically, the visible names symlinks
through `..data` (kubernetes/pkg/volume/util/atomic_writer.go)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class ConfigMapDir:
    """A folder written the way the kubelet writes a ConfigMap volume (atomic `..data`
    swap, user-visible names as symlinks through `..data`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir(parents=True)

    def publish(self, files: dict[str, str], *, finish: bool = True) -> None:
        """Write a new version; `finish=False` stops right after the `..data` swap, with
        the visible links not yet added or removed (a removed file's link dangles)."""
        self.version += 1
        new = self.root / f"..2024_01_01_00_00_{self.version:02d}.000000001"
        new.mkdir()
        for name, text in files.items():
            (new / name).write_text(text)
        old = (self.root / "..data").resolve() if (self.root / "..data").exists() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, self.root / "..data")
        if not finish:
            return
        for name in files:
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")
        for link in self.root.iterdir():
            if link.is_symlink() and link.name not in files and not link.name.startswith(".."):
                link.unlink()
        if old is not None:
            shutil.rmtree(old)
