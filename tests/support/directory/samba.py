"""A real Samba 4 Active Directory domain controller for tests.

Provisioned once per test session into a temporary folder (~3 s) and run as
`samba -i -M single` on its own random loopback address (127.x.y.z, `bind interfaces
only`), so its fixed ports (389, 636) collide with nothing else. Needs root.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import ldap3

from gateway.names.sid import sid_to_str
from tests.support.pki import TestCA

REALM = "CORP.EXAMPLE.COM"
BASE = "DC=corp,DC=example,DC=com"
ADMIN_PASSWORD = "Adm1n-Pass-word!"
SERVICE_USER = "svc-vgate"
SERVICE_PASSWORD = "Svc-Pass-w0rd!"
SERVICE_DN = f"CN={SERVICE_USER},CN=Users,{BASE}"
UF_NORMAL = 0x200
UF_PASSWD_NOTREQD = 0x20
UF_DISABLED = 0x2
GLOBAL_SECURITY_GROUP = -2147483646


def unavailable() -> str | None:
    """Why a Samba DC cannot run here, or None."""
    if os.geteuid() != 0:
        return "the Samba AD DC tests need root (samba refuses to run otherwise)"
    for tool in ("samba-tool", "samba"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (apt: samba samba-ad-dc samba-ad-provision)"
    return None


def _free_loopback_address() -> str:
    for _ in range(50):
        ip = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        with socket.socket() as s:
            try:
                s.bind((ip, 389))
            except OSError:
                continue
        return ip
    raise RuntimeError("no free loopback address for the Samba DC")


class SambaDC:
    """One domain controller: `start()`, `stop()`, `pause()`/`resume()` (SIGSTOP: a
    directory that accepts connections and never answers)."""

    def __init__(self, workdir: Path, ca: TestCA) -> None:
        self.dir = Path(workdir)
        self.ip = _free_loopback_address()
        self.ca = ca
        self.conf = self.dir / "etc" / "smb.conf"
        self.log = self.dir / "samba.out"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- provisioning ---------------------------------------------------------------------

    def provision(self) -> SambaDC:
        tool = shutil.which("samba-tool") or "/usr/bin/samba-tool"
        subprocess.run(
            [
                tool,
                "domain",
                "provision",
                f"--targetdir={self.dir}",
                f"--realm={REALM}",
                "--domain=CORP",
                "--server-role=dc",
                "--dns-backend=NONE",
                f"--adminpass={ADMIN_PASSWORD}",
                "--use-rfc2307",
                "--host-name=dc1",
                f"--host-ip={self.ip}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        leaf = self.ca.issue("dc1", [self.ip, "dc1.corp.example.com"])
        os.chmod(leaf.key_file, 0o600)
        text = self.conf.read_text()
        text = re.sub(r"\n\s*server services = [^\n]*", "", text)
        text = re.sub(r"\n\s*(log file|interfaces|bind interfaces only) = [^\n]*", "", text)
        extra = (
            f"\tserver services = ldap\n"
            f"\tinterfaces = {self.ip}/8\n\tbind interfaces only = yes\n"
            f"\tpid directory = {self.dir}\n\tlog file = {self.dir}/log.%m\n"
            f"\tldap server require strong auth = no\n"
            f"\ttls enabled = yes\n\ttls keyfile = {leaf.key_file}\n"
            f"\ttls certfile = {leaf.cert_file}\n\ttls cafile = {self.ca.cert_file}\n"
        )
        self.conf.write_text(text.replace("[global]\n", "[global]\n" + extra, 1))
        subprocess.run(
            [tool, "user", "create", SERVICE_USER, SERVICE_PASSWORD, "-s", str(self.conf)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self

    # -- process --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> SambaDC:
        samba = shutil.which("samba") or "/usr/sbin/samba"
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the process
        self._proc = subprocess.Popen(
            [samba, "-i", "-M", "single", "-s", str(self.conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"samba exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.ip, 636), timeout=0.5):
                    pass
                self.admin().unbind()
                return self
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"samba did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def pause(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    # -- content --------------------------------------------------------------------------

    @property
    def ldap_url(self) -> str:
        return f"ldap://{self.ip}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{self.ip}"

    def admin(self) -> ldap3.Connection:
        server = ldap3.Server(self.ip, get_info=ldap3.NONE, connect_timeout=2)
        return ldap3.Connection(
            server,
            f"Administrator@{REALM.lower()}",
            ADMIN_PASSWORD,
            auto_bind=True,
            raise_exceptions=True,
            receive_timeout=10,
        )


class Seeder:
    """Creates OUs, groups and users over LDAP (one admin connection, bulk adds)."""

    def __init__(self, conn: ldap3.Connection) -> None:
        self.conn = conn

    def ou(self, name: str) -> str:
        dn = f"OU={name},{BASE}"
        self.conn.add(dn, ["top", "organizationalUnit"])
        return dn

    def group(self, name: str, ou: str) -> str:
        dn = f"CN={name},{ou}"
        self.conn.add(
            dn, ["top", "group"], {"sAMAccountName": name, "groupType": GLOBAL_SECURITY_GROUP}
        )
        return dn

    def user(self, name: str, ou: str, *, disabled: bool = False) -> str:
        dn = f"CN={name},{ou}"
        uac = UF_NORMAL | UF_PASSWD_NOTREQD | (UF_DISABLED if disabled else 0)
        self.conn.add(
            dn,
            ["top", "person", "organizationalPerson", "user"],
            {
                "sAMAccountName": name,
                "userPrincipalName": f"{name}@corp.example.com",
                "mail": f"{name}@corp.example.com",
                "userAccountControl": uac,
            },
        )
        return dn

    def add_members(self, group_dn: str, member_dns: list[str]) -> None:
        self.conn.modify(group_dn, {"member": [(ldap3.MODIFY_ADD, member_dns)]})

    def remove_members(self, group_dn: str, member_dns: list[str]) -> None:
        self.conn.modify(group_dn, {"member": [(ldap3.MODIFY_DELETE, member_dns)]})

    def rid(self, dn: str) -> int:
        return int(self.sid(dn).rsplit("-", 1)[1])

    def sid(self, dn: str) -> str:
        self.conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
        return sid_to_str(self.conn.response[0]["raw_attributes"]["objectSid"][0])

    def set_primary_group(self, user_dn: str, group_dn: str) -> None:
        self.conn.modify(
            user_dn, {"primaryGroupID": [(ldap3.MODIFY_REPLACE, [self.rid(group_dn)])]}
        )
