"""Count directory round trips per N requests on the cached path.

    python -m loadtests.directory_cache [--requests 2000] [--users 20] [--concurrency 8]

Builds a throwaway world on loopback (a real Samba AD DC, the real npm IdP, a test API
server, a vgate gateway with an `ldap` section), sends a cold round (one request per
user), then N requests spread over the same users, and prints how many directory lookups
each phase cost. The cached path must cost none. Needs root (Samba) and node (the IdP).
Bounded: at most 20000 requests, everything on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from tests.fakekube import Caller, FakeKube
from tests.support.directory.samba import (
    BASE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SambaDC,
    Seeder,
    unavailable,
)
from tests.support.gateway_thread import GatewayThread
from tests.support.oidc import OIDCProvider
from tests.support.pki import TestCA


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    requests = max(1, min(args.requests, 20_000))
    users = max(1, min(args.users, 200))
    why = unavailable()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vgate-dircache-") as tmp:
        return run(Path(tmp), requests, users, max(1, min(args.concurrency, 32)))


def run(base: Path, requests: int, users: int, concurrency: int) -> int:
    ca = TestCA(base / "pki")
    dc = SambaDC(base / "dc", ca).provision().start()
    fake = idp = gateway = None
    try:
        seeder = Seeder(dc.admin())
        people, groups = seeder.ou("People"), seeder.ou("Groups")
        admins = seeder.group("k8s-admins", groups)
        names = [f"load{i:03d}" for i in range(users)]
        seeder.add_members(admins, [seeder.user(n, people) for n in names])
        token = "gateway-credential"
        fake = FakeKube(
            name="tenant1",
            tls=ca.issue("tenant1", ["127.0.0.1"]),
            tokens={token: Caller(user="gw", groups=(), may_impersonate=True)},
        ).start()
        (base / "tenant1.token").write_text(token + "\n")
        idp = OIDCProvider(
            base / "idp",
            users={n: {"email": f"{n}@corp.example.com", "name": n, "groups": []} for n in names},
        ).start()
        (base / "policies").mkdir()
        (base / "policies" / "t1.yaml").write_text(
            yaml.safe_dump(
                {"tenant": "tenant1", "roles": {"cluster-admin": {"directory_groups": [admins]}}}
            )
        )
        (base / "pw").write_text(SERVICE_PASSWORD)
        leaf = ca.issue("gateway", ["127.0.0.1"])
        gateway = GatewayThread(
            base / "gw",
            {
                "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
                "oidc": {
                    "issuers": [
                        {"issuer": idp.issuer, "audiences": ["vgate"], "username_claim": "email"}
                    ]
                },
                "policies": str(base / "policies"),
                "audit": {"file": str(base / "audit.log")},
                "tenants": [
                    {
                        "name": "tenant1",
                        "upstream": fake.url,
                        "ca_file": str(ca.cert_file),
                        "token_file": str(base / "tenant1.token"),
                    }
                ],
                "ldap": {
                    "urls": [dc.ldap_url],
                    "tls": "starttls",
                    "ca_file": str(ca.cert_file),
                    "bind_dn": SERVICE_DN,
                    "bind_password_file": str(base / "pw"),
                    "user_base_dn": BASE,
                    "group_base_dn": BASE,
                    "cache_ttl_seconds": 300,
                    "flush_file": str(base / "flush"),
                },
            },
        ).start()
        tokens = [idp.login(n).id_token for n in names]
        directory = gateway.gateway.directory
        tls = ssl.create_default_context(cafile=str(ca.cert_file))
        url = f"{gateway.url}/clusters/tenant1/api/v1/namespaces/default/pods"

        def phase(count: int) -> tuple[int, float, int]:
            before = directory.round_trips
            started = time.perf_counter()
            failures = 0
            with (
                httpx.Client(verify=tls, timeout=10) as client,
                ThreadPoolExecutor(concurrency) as pool,
            ):

                def one(i: int) -> int:
                    headers = {"Authorization": f"Bearer {tokens[i % users]}"}
                    return client.get(url, headers=headers).status_code

                for code in pool.map(one, range(count)):
                    failures += code != 200
            return directory.round_trips - before, time.perf_counter() - started, failures

        cold, cold_s, cold_fail = phase(users)
        warm, warm_s, warm_fail = phase(requests)
        print(f"users: {users}, concurrency: {concurrency}")
        print(
            f"cold round:   {users} requests -> {cold} directory lookups "
            f"({cold_s * 1000:.0f} ms, {cold_fail} non-200)"
        )
        print(
            f"cached path:  {requests} requests -> {warm} directory lookups "
            f"({warm / requests * 1000:.2f} per 1000 requests; {requests / warm_s:.0f} req/s "
            f"through httpx, {warm_fail} non-200)"
        )
        return 0 if warm == 0 and cold == users and not (cold_fail or warm_fail) else 1
    finally:
        for part in (gateway, idp, fake):
            if part is not None:
                part.stop()
        dc.stop()


if __name__ == "__main__":
    sys.exit(main())
