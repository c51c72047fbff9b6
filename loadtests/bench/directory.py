"""The directory behind the `vgate-ad-groups` target: a real Samba AD DC (the one the test
suite provisions, `tests/support/directory/samba.py`) holding one bench user in one group that the
bench policy grants `view`. The user's token carries no group with a role, so every allowed
request depends on the directory answer, which vgate caches (the measured path)."""

from __future__ import annotations

from pathlib import Path

USER_NUMBER = 2  # LocalIssuer.token(n) for n % 100 == 2 is bench-user-002@example.com
USER = f"bench-user-{USER_NUMBER:03d}"
EMAIL = f"{USER}@example.com"


def unavailable() -> str | None:
    """Why the directory target cannot run here (one line), or None."""
    try:
        from tests.support.directory.samba import unavailable as samba_unavailable
    except ImportError as exc:  # the bench runs from a checkout; tests/ holds the DC helper
        return f"the Samba DC helper (tests/support/directory/samba.py) cannot be imported: {exc}"
    return samba_unavailable()


class BenchDirectory:
    """Provision, start and seed the DC; `vgate_ldap()` is the gateway's `ldap` section."""

    def __init__(self, work: Path) -> None:
        self.work = work / "ad"
        self.work.mkdir(exist_ok=True)
        self.dc = None
        self.ca = None
        self.group_dn = ""

    def start(self) -> BenchDirectory:
        from tests.support.directory.samba import SambaDC, Seeder
        from tests.support.pki import TestCA

        self.ca = TestCA(self.work / "pki")
        self.dc = SambaDC(self.work / "dc", self.ca).provision().start()
        conn = self.dc.admin()
        try:
            seeder = Seeder(conn)
            people, groups = seeder.ou("People"), seeder.ou("Groups")
            self.group_dn = seeder.group("k8s-bench-viewers", groups)
            user_dn = seeder.user(USER, people)
            conn.modify(user_dn, {"mail": [("MODIFY_REPLACE", [EMAIL])]})
            seeder.add_members(self.group_dn, [user_dn])
        finally:
            conn.unbind()
        return self

    def vgate_ldap(self) -> dict:
        from tests.support.directory.samba import BASE, SERVICE_DN, SERVICE_PASSWORD

        assert self.dc is not None and self.ca is not None
        password = self.work / "bind-password"
        password.write_text(SERVICE_PASSWORD)
        return {
            "urls": [self.dc.ldap_url],
            "tls": "starttls",
            "ca_file": str(self.ca.cert_file),
            "bind_dn": SERVICE_DN,
            "bind_password_file": str(password),
            "user_base_dn": BASE,
            "group_base_dn": BASE,
            "user_attribute": "mail",
            "user_claim": "email",
            "cache_ttl_seconds": 3600,
            "max_staleness_seconds": 7200,
            "flush_file": str(self.work / "flush"),
        }

    def roles(self) -> dict:
        """The bench policy: `view` for the directory group only."""
        return {"view": {"directory_groups": [self.group_dn]}}

    def stop(self) -> None:
        if self.dc is not None:
            self.dc.stop()
