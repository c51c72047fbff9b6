"""Tenant-native token reviews when the tenant misbehaves (the happy paths run against real
API servers in tests/e2e/test_tenant_tokens.py): a refusal or no answer is a 503 that is
not cached, an unusable answer is a 401, and the answer cache stays bounded."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.authn.errors import AuthError
from gateway.authn.tenant_tokens import ReviewUnavailable, TenantTokens
from gateway.config.model import TokenReview
from gateway.registry import Upstream
from gateway.tenant_api import CredentialRefused, TenantApi
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, crafted_config
from tests.support.scripted import ScriptedUpstream


class Reviewer:
    """Answers TokenReviews as scripted: `status` (HTTP) and `user` per token."""

    def __init__(self, upstream: ScriptedUpstream) -> None:
        self.upstream = upstream
        self.status = 201
        self.users: dict[str, dict] = {}
        self.reviews = 0

    async def __call__(self, head: bytes, reader, writer) -> bool:
        length = (
            int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if b"content-length: " in head.lower()
            else 0
        )
        body = json.loads(await reader.readexactly(length)) if length else {}
        status = 200
        if b"tokenreviews" in head.split(b"\r\n")[0]:
            status = self.status
            self.reviews += 1
            user = self.users.get(body["spec"]["token"])
            answer = {
                "status": {
                    "authenticated": user is not None,
                    "user": user or {},
                    "error": None if user else "invalid bearer token",
                }
            }
        else:
            answer = {"kind": "List", "items": []}
        data = json.dumps(answer).encode()
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (status, len(data), data)
        )
        await writer.drain()
        return True


@pytest.fixture
def reviewer(upstream: ScriptedUpstream) -> Iterator[Reviewer]:
    r = Reviewer(upstream)
    upstream.handler = r
    yield r
    upstream.handler = upstream.default
    time.sleep(0.2)  # the upstream's thread sees the closed connections before it stops


def tenant(port: int) -> Upstream:
    return Upstream(
        name="t1",
        host="127.0.0.1",
        port=port,
        ssl=None,
        server_hostname=None,
        authorization=lambda: b"Bearer gateway",
        token_passthrough=True,
    )


def test_a_refusing_or_absent_tenant_is_named_or_unavailable_and_not_cached(
    reviewer: Reviewer, upstream: ScriptedUpstream, caplog
) -> None:
    async def scenario() -> None:
        tokens = TenantTokens(TokenReview(), TenantApi())
        reviewer.status = 403
        # a lasting misconfiguration, named (not "try again"), and logged
        with pytest.raises(
            CredentialRefused, match=r"create authentication\.k8s\.io/tokenreviews \(HTTP 403\)"
        ):
            await tokens.authenticate(tenant(upstream.port), "opaque")
        assert "create authentication.k8s.io/tokenreviews" in caplog.text
        reviewer.status = 201
        reviewer.users["opaque"] = {
            "username": "system:serviceaccount:ci:bot",
            "uid": "1",
            "groups": ["system:serviceaccounts"],
        }
        identity = await tokens.authenticate(tenant(upstream.port), "opaque")
        assert identity.reviewed_by == "t1"
        assert identity.username == "system:serviceaccount:ci:bot"
        assert reviewer.reviews == 2
        dead = Upstream(
            name="t2",
            host="127.0.0.1",
            port=1,
            ssl=None,
            server_hostname=None,
            authorization=None,
            token_passthrough=True,
        )
        with pytest.raises(ReviewUnavailable, match="ConnectError"):
            await tokens.authenticate(dead, "opaque")
        await tokens.api.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("how", ["dribbled", "huge"])
def test_an_answer_dribbled_or_huge_is_no_answer_in_bounded_time(
    upstream: ScriptedUpstream, how: str
) -> None:
    """A tenant that sends its TokenReview answer a byte at a time, or sends far more than
    an answer, gets a 503 ("cannot review") within the review timeout, and the gateway
    holds at most `MAX_ANSWER_BYTES` of it. Before, the timeout bounded each read only:
    the call lasted as long as the tenant dribbled, and the whole answer was read."""
    stop = asyncio.Event()

    async def hostile(head: bytes, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 201 X\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: 1000000000\r\n\r\n")
        while not stop.is_set():
            writer.write(b" " if how == "dribbled" else b" " * 65536)
            await writer.drain()
            if how == "dribbled":
                await asyncio.sleep(0.05)
        return False

    async def scenario() -> float:
        tokens = TenantTokens(TokenReview(), TenantApi(timeout=0.5))
        started = time.monotonic()
        try:
            with pytest.raises(ReviewUnavailable):
                await asyncio.wait_for(tokens.authenticate(tenant(upstream.port), "t"), 10)
            return time.monotonic() - started
        finally:
            upstream.loop.call_soon_threadsafe(stop.set)
            await tokens.api.close()

    upstream.handler = hostile
    try:
        took = asyncio.run(scenario())
    finally:
        upstream.handler = upstream.default
    assert took < 2.0, took


def test_unusable_answers_are_rejections(reviewer: Reviewer, upstream: ScriptedUpstream) -> None:
    async def scenario() -> None:
        tokens = TenantTokens(TokenReview(), TenantApi())
        reviewer.users["bad"] = {"username": "evil\r\nImpersonate-User: admin", "uid": ""}
        with pytest.raises(AuthError, match="unusable"):
            await tokens.authenticate(tenant(upstream.port), "bad")
        with pytest.raises(AuthError, match="invalid bearer token"):
            await tokens.authenticate(tenant(upstream.port), "unknown")
        with pytest.raises(AuthError):  # the rejection is cached: no second review
            tokens.cached(tenant(upstream.port), "unknown")
        assert reviewer.reviews == 2
        await tokens.api.close()

    asyncio.run(scenario())


def test_the_answer_cache_is_bounded(reviewer: Reviewer, upstream: ScriptedUpstream) -> None:
    async def scenario() -> None:
        tokens = TenantTokens(TokenReview(cache_size=2), TenantApi())
        for name in ("a", "b", "c"):
            reviewer.users[name] = {"username": name}
            await tokens.authenticate(tenant(upstream.port), name)
        assert tokens.cached(tenant(upstream.port), "c") is not None
        assert tokens.cached(tenant(upstream.port), "a") is None  # evicted
        assert len(tokens._answers) == 2
        await tokens.api.close()

    asyncio.run(scenario())


@pytest.fixture
def gateway(
    tmp_path: Path, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> Iterator[GatewayThread]:
    config = crafted_config(
        tmp_path,
        issuer.issuer,
        upstream.port,
        ("t1",),
        {"all.yaml": {"tenant": "*", "roles": {"view": {"groups": ["developers"]}}}},
        tenant_options={"token_passthrough": True},
    )
    with GatewayThread(tmp_path, config) as gw:
        yield gw


def test_the_gateway_answers_503_when_the_tenant_cannot_review(
    gateway: GatewayThread, reviewer: Reviewer, upstream: ScriptedUpstream
) -> None:
    reviewer.status = 500
    r = httpx.get(f"{gateway.url}/clusters/t1/api", headers={"Authorization": "Bearer xyz"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["kind"] == "Status" and "could not check this token" in r.json()["message"]
    reviewer.status = 201
    reviewer.users["xyz"] = {"username": "system:serviceaccount:ci:deployer"}
    upstream.heads.clear()
    r = httpx.get(f"{gateway.url}/clusters/t1/api", headers={"Authorization": "Bearer xyz"})
    assert r.status_code == 200
    sent = upstream.heads[-1].decode()
    assert "Authorization: Bearer xyz\r\n" in sent  # the tenant's own token, as it came
    assert "impersonate-" not in sent.lower()  # and nothing impersonated
