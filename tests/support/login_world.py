"""`vgate login` / `vgate logout` against the real dev IdP, without a gateway.

`LoginWorld` runs the IdP (plain HTTP, or TLS from a private test CA), puts a scripted
browser user (tests/support/browser_user.py) behind `$BROWSER` with a log line per run, and
starts plugin processes the way kubectl does: many at once if asked, each with its stdout
and stderr in files. The environment it gives them never trusts the test CA by itself
(`SSL_CERT_FILE` and friends are removed): what `vgate` trusts comes from its arguments.
Only the scripted browser trusts the CA, like a person's browser that has it installed.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt

from tests.support.oidc import OIDCProvider
from tests.support.pki import TestCA

REPO_ROOT = Path(__file__).resolve().parents[2]
USERS = {
    "alice": {
        "email": "alice@example.com",
        "name": "Alice",
        "groups": ["tenant1-admins"],
        "password": "alice-pw",
    },
    "bob": {
        "email": "bob@example.com",
        "name": "Bob",
        "groups": ["developers"],
        "password": "bob-pw",
    },
    "carol": {
        "email": "carol@example.com",
        "name": "Carol",
        "groups": ["developers"],
        "password": "carol-pw",
    },
}
_TRUST_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

_BROWSER = """#!/bin/sh
# a person at a browser: waits $VGATE_TEST_BROWSER_DELAY s, trusts $VGATE_TEST_BROWSER_CA
if [ -n "$VGATE_TEST_BROWSER_DELAY" ]; then sleep "$VGATE_TEST_BROWSER_DELAY"; fi
if [ -n "$VGATE_TEST_BROWSER_CA" ]; then
  SSL_CERT_FILE="$VGATE_TEST_BROWSER_CA"; export SSL_CERT_FILE
fi
exec "{python}" -m tests.support.browser_user "$@"
"""
_BROKEN_BROWSER = """#!/bin/sh
# a browser that cannot be started: logs the attempt, fails
echo "broken $1" >> "$VGATE_TEST_BROWSER_LOG"
exit 1
"""


@dataclass
class Plugin:
    """One running `python -m gateway ...` with its output in files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """(exit code, stdout, stderr); kills the process when it outlives `timeout`."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"pid {self.proc.pid} still ran after {timeout} s:\n" + self.stderr()[-2000:]
            ) from None
        return code, self.out.read_text(), self.stderr()


@dataclass
class LoginWorld:
    dir: Path
    idp: OIDCProvider
    ca: TestCA | None
    bin_dir: Path
    browser_log: Path

    @property
    def issuer(self) -> str:
        return self.idp.issuer

    @property
    def ca_data(self) -> str:
        """The IdP's CA as `--issuer-ca-data` carries it."""
        assert self.ca is not None
        return base64.b64encode(self.ca.cert_file.read_bytes()).decode()

    def env(
        self,
        user: str = "alice",
        *,
        cache: Path,
        mode: str = "login",
        browser: str | None = "test-browser",
        delay: float = 0.0,
        **extra: str,
    ) -> dict[str, str]:
        """The plugin's environment acting as `user`; `browser=None`: a box without one."""
        env = {k: v for k, v in os.environ.items() if k not in _TRUST_ENV}
        env.pop("BROWSER", None)
        env.update(
            {
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONPATH": str(REPO_ROOT),
                "VGATE_TEST_USER": user,
                "VGATE_TEST_PASSWORD": USERS[user]["password"],
                "VGATE_TEST_BROWSER_MODE": mode,
                "VGATE_TEST_BROWSER_LOG": str(self.browser_log),
                "VGATE_TEST_BROWSER_DELAY": str(delay) if delay else "",
                "VGATE_CACHE_DIR": str(cache),
                "VGATE_LOGIN_PORTS": "0",
                "DISPLAY": "",
                "WAYLAND_DISPLAY": "",
            }
        )
        if browser is not None:
            env["BROWSER"] = str(self.bin_dir / browser)
        if self.ca is not None:
            env["VGATE_TEST_BROWSER_CA"] = str(self.ca.cert_file)
        env.update(extra)
        return env

    def browser_runs(self) -> list[str]:
        """One line per browser run ("login 127.0.0.1:PORT", "broken URL", ...)."""
        return self.browser_log.read_text().splitlines() if self.browser_log.exists() else []

    def login_args(self, *extra: str) -> list[str]:
        return ["login", f"--issuer={self.issuer}", "--client-id=vgate", *extra]

    def vgate(
        self, *args: str, env: dict[str, str], timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, args: list[str], env: dict[str, str], name: str) -> Plugin:
        out, err = self.dir / f"{name}.out", self.dir / f"{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", *args],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=o,
                stderr=e,
            )
        return Plugin(proc, out, err)

    def start_many(self, n: int, args: list[str], env: dict[str, str], name: str) -> list[Plugin]:
        """`n` plugin processes started at once, like kubectl calls from a script."""
        return [self.start(args, env, f"{name}-{i}") for i in range(n)]

    def claims(self, id_token: str) -> dict:
        """The ID token's claims after checking it like the gateway would (signature by
        the IdP's published key, iss, aud `vgate`, exp)."""
        kid = jwt.get_unverified_header(id_token)["kid"]
        jwk = next(k for k in self.idp.public_jwks["keys"] if k["kid"] == kid)
        return jwt.decode(
            id_token,
            jwt.PyJWK(jwk).key,
            algorithms=[jwk["alg"]],
            audience="vgate",
            issuer=self.issuer,
            options={"require": ["exp", "iat", "sub"]},
        )

    def stop(self) -> None:
        self.idp.stop()


def cache_entry(cache: Path) -> dict:
    """The one token-cache entry in `cache`."""
    files = list(cache.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def wait_for_line(plugin: Plugin, marker: str, timeout: float = 60) -> str:
    """The first stderr line of `plugin` holding `marker` (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in plugin.stderr().splitlines():
            if marker in line:
                return line
        if plugin.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {marker!r} from pid {plugin.proc.pid}:\n{plugin.stderr()}")


def running(base: Path, *, tls: bool) -> Iterator[LoginWorld]:
    """A world for a module-scoped fixture (the IdP stops when the module is done)."""
    ca = TestCA(base / "pki") if tls else None
    leaf = ca.issue("idp", ["127.0.0.1"]) if ca else None
    idp = OIDCProvider(base / "idp", users=USERS, tls=leaf).start()
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("test-browser", _BROWSER.format(python=sys.executable)),
        ("broken-browser", _BROKEN_BROWSER),
    ):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    world = LoginWorld(base, idp, ca, bin_dir, base / "browser.log")
    try:
        yield world
    finally:
        world.stop()
