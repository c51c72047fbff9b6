"""Key rotation at the IdP and an IdP outage, seen through the gateway by real kubectl."""

from __future__ import annotations

import ssl
import time

import httpx

from tests.support.kubectl_world import World


def _get(world: World, token: str) -> httpx.Response:
    return httpx.get(
        f"{world.gateway.url}/clusters/tenant1/api/v1/namespaces/default/pods",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(world.ca.cert_file)),
        timeout=10,
    )


def test_key_rotation_and_outage(world: World) -> None:
    idp = world.idp
    before = world.token("alice")
    assert _get(world, before).status_code == 200
    old_kid = idp.kid

    # rotation: the IdP now signs with a new key the gateway has never seen
    idp.rotate_keys(keep_old=True)
    assert idp.kid != old_kid
    time.sleep(0.6)  # past jwks_refresh_min_interval_seconds
    rotated = world.token("bob")
    assert _get(world, rotated).status_code == 200, "unknown kid must trigger a JWKS refetch"
    assert _get(world, before).status_code == 200, "tokens of the kept old key stay valid"

    # outage: with the IdP down, tokens signed by known keys still validate
    fresh = world.token("carol")  # minted, never yet shown to the gateway
    alice_again = world.token("alice")
    idp.stop()
    try:
        assert _get(world, alice_again).status_code == 200
        r = _get(world, fresh)
        assert r.status_code == 403, "carol has no role on tenant1, but her token verified"
        forged = alice_again.rsplit(".", 1)[0] + ".AAAA"
        assert _get(world, forged).status_code == 401
    finally:
        idp.restart()
    assert _get(world, world.token("alice")).status_code == 200
