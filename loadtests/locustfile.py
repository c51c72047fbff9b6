"""Locust scenarios that drive a vgate gateway like a crowd of kubectl users and controllers.

Point it at any gateway: `locust -f loadtests/locustfile.py --host https://gateway …` with
`VGATE_TOKENS=tokens.json` (see loadtests/README.md for the file's shape and for
`python -m loadtests.run`, which starts a local stack and runs a bounded scenario).

User classes (pick them by name on the command line):
  KubectlUser     discovery, get/list with `limit`, server-side apply, an occasional watch
  ControllerUser  long-lived watches with bookmarks, re-established when they end
  RefreshStorm    refreshes its token at the IdP before every request (uncached verifies)
  DeniedUser      a user with no role hammering a tenant: must get 403s, and cheaply
Every user picks a (tenant, user) pair from the tokens file, so several tenants with
different roles run at once; a `view` user's writes are expected to be refused (403).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from typing import Any

import requests
from locust import HttpUser, between, constant, events, task

WATCH_SECONDS = int(os.environ.get("VGATE_WATCH_SECONDS", "8"))
_lock = threading.Lock()
_tokens: dict[str, Any] | None = None
_counter = itertools.count()


def tokens() -> dict[str, Any]:
    """The tokens file: {"identities": [{tenant, user, role, token, refresh_token?}],
    "idp": {token_endpoint, client_id}?}. Roles: cluster-admin, view, none."""
    global _tokens
    with _lock:
        if _tokens is None:
            path = os.environ.get("VGATE_TOKENS")
            if not path:
                raise RuntimeError("set VGATE_TOKENS to a tokens file (see loadtests/README.md)")
            with open(path) as f:
                _tokens = json.load(f)
        return _tokens


def pick(roles: tuple[str, ...]) -> dict[str, Any]:
    """A (tenant, user) identity with one of `roles`, spread over every tenant."""
    choices = [i for i in tokens()["identities"] if i["role"] in roles]
    if not choices:
        raise RuntimeError(f"the tokens file has no identity with a role in {roles}")
    return dict(choices[next(_counter) % len(choices)])


class Tenant(HttpUser):
    abstract = True
    roles: tuple[str, ...] = ("cluster-admin", "view")

    def on_start(self) -> None:
        self.who = pick(self.roles)
        self.prefix = f"/clusters/{self.who['tenant']}"
        self.client.headers["Authorization"] = f"Bearer {self.who['token']}"
        self.client.headers["Accept"] = "application/json"
        self.client.headers["User-Agent"] = "kubectl/v1.32.0 (locust) vgate-loadtest"

    def api(
        self, method: str, path: str, name: str, expect: tuple[int, ...] = (200,), **kw: Any
    ) -> requests.Response:
        with self.client.request(
            method, self.prefix + path, name=name, catch_response=True, **kw
        ) as resp:
            if resp.status_code in expect:
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
            return resp

    def writes_allowed(self) -> bool:
        return self.who["role"] in ("cluster-admin", "admin")


class KubectlUser(Tenant):
    """What `kubectl get/apply` does, with think time between commands."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        super().on_start()
        self.discovery()

    @task(1)
    def discovery(self) -> None:
        for path in ("/version", "/api", "/apis"):
            self.api("GET", path, f"discovery {path}")

    @task(6)
    def list_pods(self) -> None:
        self.api("GET", "/api/v1/namespaces/default/pods?limit=500", "list pods limit=500")

    @task(3)
    def list_configmaps(self) -> None:
        self.api(
            "GET", "/api/v1/namespaces/default/configmaps?limit=50", "list configmaps limit=50"
        )

    @task(2)
    def apply_configmap(self) -> None:
        name = f"locust-{self.who['user']}-{random.randrange(20)}"
        body = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "default"},
                "data": {"at": str(time.time())},
            }
        )
        expect = (200, 201) if self.writes_allowed() else (403,)
        self.api(
            "PATCH",
            f"/api/v1/namespaces/default/configmaps/{name}?fieldManager=kubectl&force=true",
            "apply configmap",
            expect=expect,
            data=body,
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        if self.writes_allowed():
            self.api("GET", f"/api/v1/namespaces/default/configmaps/{name}", "get configmap")

    @task(1)
    def short_watch(self) -> None:
        watch(self, seconds=2, name="watch configmaps (kubectl get -w)")


def watch(user: Tenant, *, seconds: int, name: str) -> None:
    """A watch that the server ends after `seconds`; counts the events as one request."""
    path = (
        f"{user.prefix}/api/v1/namespaces/default/configmaps?watch=true"
        f"&allowWatchBookmarks=true&timeoutSeconds={seconds}"
    )
    start = time.perf_counter()
    events_seen = 0
    exc: Exception | None = None
    status = 0
    try:
        with user.client.get(
            path, name=name, stream=True, catch_response=True, timeout=seconds + 10
        ) as resp:
            status = resp.status_code
            if status == 200:
                for line in resp.iter_lines():
                    if line:
                        events_seen += 1
                resp.success()
            else:
                resp.failure(f"HTTP {status}")
    except requests.RequestException as e:
        exc = e
    if exc is not None:
        events.request.fire(
            request_type="WATCH",
            name=name,
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=exc,
        )


class ControllerUser(Tenant):
    """An informer: long watches with bookmarks, re-listed and re-watched when they end."""

    roles = ("cluster-admin",)
    wait_time = constant(0)

    @task
    def informer(self) -> None:
        self.api(
            "GET", "/api/v1/namespaces/default/configmaps?limit=500", "controller list configmaps"
        )
        watch(self, seconds=WATCH_SECONDS, name="controller watch configmaps")


class RefreshStorm(Tenant):
    """Every request with a token just refreshed at the IdP: a storm of first-seen tokens."""

    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.idp = tokens().get("idp")
        self.refresh_token = self.who.get("refresh_token")
        if not self.idp or not self.refresh_token:
            raise RuntimeError("RefreshStorm needs an idp section and refresh tokens")
        self.session = requests.Session()

    @task
    def refresh_then_list(self) -> None:
        start = time.perf_counter()
        try:
            resp = self.session.post(
                self.idp["token_endpoint"],
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": self.refresh_token,
                    "client_id": self.idp["client_id"],
                },
                timeout=10,
            )
            resp.raise_for_status()
            answer = resp.json()
            exc = None
        except (requests.RequestException, ValueError) as e:
            exc, answer = e, {}
        events.request.fire(
            request_type="POST",
            name="IdP token refresh",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=0,
            exception=exc,
        )
        if exc is not None:
            return
        self.refresh_token = answer.get("refresh_token", self.refresh_token)
        self.client.headers["Authorization"] = f"Bearer {answer['id_token']}"
        self.api("GET", "/api/v1/namespaces/default/pods?limit=500", "list pods with a fresh token")


class DeniedUser(Tenant):
    """No role on the tenant: every request must be refused by the gateway with 403."""

    roles = ("none",)
    wait_time = constant(0)

    @task
    def hammer(self) -> None:
        self.api(
            "GET", "/api/v1/namespaces/default/pods?limit=500", "denied list pods", expect=(403,)
        )
