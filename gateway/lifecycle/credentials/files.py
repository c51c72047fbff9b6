"""Per-tenant credential files the gateway reads: `<dir>/<tenant>/token` and `ca.crt`.

Directories are 0700 and files 0600 (readable only by the gateway's user); every write is
atomic (temp file + rename) so a reader never sees half a token.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gateway.private_file import write_private


class CredentialFiles:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, tenant: str) -> Path:
        return self.root / tenant

    def token_path(self, tenant: str) -> Path:
        return self.folder(tenant) / "token"

    def ca_path(self, tenant: str) -> Path:
        return self.folder(tenant) / "ca.crt"

    def read(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: Path, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
        write_private(path, data)

    def remove(self, tenant: str) -> None:
        shutil.rmtree(self.folder(tenant), ignore_errors=True)

    def exists(self, tenant: str) -> bool:
        return self.folder(tenant).exists()
