"""The gateway's serving certificate, reloaded when its files change.

cert-manager renews the Secret and the kubelet swaps the mounted files (an atomic symlink
flip); a renewed certificate must be served without a restart. `ServingCertificate` owns
the `SSLContext` the listener uses and looks at the files' identity (device, inode, size,
mtime, following symlinks) every `check_seconds`. A change is loaded into a scratch context
first, and only a pair that loads cleanly (key matches certificate) goes into the live
context: new handshakes get it, open connections keep theirs. A bad pair is logged and the
previous certificate stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from pathlib import Path

from gateway.http.tls_object import direct_records
from gateway.private_file import write_private

log = logging.getLogger("vgate.tls")


def _new_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # kubectl must not negotiate HTTP/2 with us
    return direct_records(ctx)


class ServingCertificate:
    def __init__(self, cert_file: Path, key_file: Path, *, check_seconds: float = 10.0) -> None:
        """Load the pair now (errors propagate: the gateway must not start without it)."""
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.check_seconds = check_seconds
        self.context = _new_context()
        self._identity = self._files_identity()
        self.context.load_cert_chain(str(self.cert_file), str(self.key_file))
        self.reloads = 0
        self._task: asyncio.Task | None = None

    def _files_identity(self) -> tuple | None:
        try:
            return tuple(
                (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)
                for s in (os.stat(self.cert_file), os.stat(self.key_file))
            )
        except OSError:
            return None

    def check(self) -> bool:
        """Load the files if they changed and form a valid pair; True when reloaded."""
        identity = self._files_identity()
        if identity is None or identity == self._identity:
            return False
        self._identity = identity  # a bad pair is reported once per change, not every check
        try:
            pair = (self.cert_file.read_bytes(), self.key_file.read_bytes())
        except OSError as exc:
            log.error(
                "serving certificate %s unreadable, keeping the previous one: %s",
                self.cert_file,
                exc,
            )
            return False
        # One snapshot of both files, checked in a scratch context and then loaded into the
        # live one: a file swapped in between can never pair a new certificate with an old key.
        with tempfile.TemporaryDirectory(prefix="vgate-tls-") as folder:
            cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
            write_private(cert, pair[0])
            write_private(key, pair[1])
            try:
                _new_context().load_cert_chain(str(cert), str(key))
            except ssl.SSLError as exc:
                log.error(
                    "new serving certificate %s not loaded, keeping the previous one: %s",
                    self.cert_file,
                    exc,
                )
                return False
            self.context.load_cert_chain(str(cert), str(key))
        self.reloads += 1
        log.info("serving certificate reloaded from %s", self.cert_file)
        return True

    def start(self) -> None:
        if self.check_seconds > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="tls-reload")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
