"""`vgate serve` with two workers: a portal sign-out holds on every worker of the host.

The workers share the listening socket, so each new connection lands on either; a
connection stays with its worker, and /proc tells which worker holds it. The
signed-out sessions live in one SQLite file both workers read
(tests/test_portal_sessions.py shows the cross-process part alone).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.support.crafted_op import CraftedProvider, crafted_sign_in, portal_config
from tests.support.oidc import free_port
from tests.support.served import ServedGateway
from tests.support.workers import worker_of

pytestmark = [pytest.mark.slow]

ATTEMPTS = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    base = tmp_path_factory.mktemp("workers")
    with CraftedProvider() as op:
        port = free_port()
        config = {**portal_config(base, op.issuer, port), "workers": 2}
        path = base / "vgate.yaml"
        path.write_text(yaml.safe_dump(config))
        with ServedGateway(path, workers=2) as gateway:
            yield f"http://127.0.0.1:{port}", gateway.proc.pid


@contextlib.contextmanager
def _connection(
    served: tuple[str, int], cookie: str | None = None
) -> Iterator[tuple[httpx.Client, int]]:
    """A client on one new keep-alive connection, and the pid of the worker holding it."""
    url, master = served
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        r = c.get(url + "/healthz")
        client_port = r.extensions["network_stream"].get_extra_info("client_addr")[1]
        worker = worker_of(master, int(url.rsplit(":", 1)[1]), client_port)
        assert worker is not None, "could not tell which worker holds the connection"
        if cookie is not None:
            c.cookies.set("vgate_portal", cookie)
        yield c, worker


def test_sign_out_on_one_worker_holds_on_the_other(served):
    url = served[0]
    with _connection(served) as (c, signed_in_on):
        assert crafted_sign_in(url, c).status_code == 303
        page = c.get(url + "/")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        cookie = c.cookies["vgate_portal"]
    works_on: set[int] = set()
    for _ in range(ATTEMPTS):  # before the sign-out, the copy works on both workers
        with _connection(served, cookie) as (c, worker):
            assert c.get(url + "/").status_code == 200
        works_on.add(worker)
        if len(works_on) == 2:
            break
    assert len(works_on) == 2, "every connection landed on one worker"
    with _connection(served, cookie) as (c, signed_out_on):
        assert c.post(url + "/logout", data={"csrf": csrf}).status_code == 200
    refused_on: dict[int, int] = {}
    for _ in range(ATTEMPTS):
        with _connection(served, cookie) as (c, worker):
            r = c.get(url + "/")
        assert r.status_code == 303 and r.headers["location"] == "/login", worker
        refused_on[worker] = refused_on.get(worker, 0) + 1
        if len(refused_on) == 2 and min(refused_on.values()) >= 3:
            break
    other = (works_on - {signed_out_on}).pop()
    assert refused_on.get(other, 0) >= 1, refused_on  # refused where it was not signed out
    print(f"signed in on {signed_in_on}, out on {signed_out_on}; refusals {refused_on}")
