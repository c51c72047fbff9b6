"""The portal's answer to ID tokens that do not pass, and to an IdP that cannot be reached.

The real IdP never issues a token for another audience, an expired one, or one signed with
a key it does not publish, so `CraftedProvider` (a small OP that signs in at once with the
token the test crafts) stands in for those; the real-IdP cases (a nonce that belongs to
another sign-in, an IdP that is down at the code exchange) are in test_portal.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.crafted_op import CraftedProvider, crafted_sign_in, portal_config
from tests.support.gateway_thread import GatewayThread
from tests.support.oidc import free_port


@pytest.fixture(scope="module")
def op() -> Iterator[CraftedProvider]:
    with CraftedProvider() as provider:
        yield provider


@pytest.fixture(scope="module")
def portal(op: CraftedProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("crafted-portal")
    with GatewayThread(base / "gw", portal_config(base, op.issuer, free_port())) as gw:
        yield gw.url


@pytest.fixture(autouse=True)
def _clean_op(op: CraftedProvider) -> Iterator[None]:
    yield
    op.overrides = {}
    op.sign_with_unknown_key = False


def _rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vgate.portal" and "sign-in rejected" in r.getMessage()
    ]


def _rejected(portal: str, caplog: pytest.LogCaptureFixture) -> httpx.Response:
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="vgate.portal"),
        httpx.Client(timeout=10, follow_redirects=False) as c,
    ):
        r = crafted_sign_in(portal, c)
        assert c.get(portal + "/").status_code == 303  # not signed in
    assert "could not be reached" not in r.text
    assert len(_rejections(caplog)) == 1, caplog.text  # logged once, with the reason
    return r


def test_a_good_token_signs_in(portal, op):
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        r = crafted_sign_in(portal, c)
        assert r.status_code == 303 and r.headers["location"] == "/", r.text
        page = c.get(portal + "/")
        assert page.status_code == 200 and "oidc:alice@example.com" in page.text


def test_wrong_audience_is_a_400_that_names_it(portal, op, caplog):
    op.overrides = {"aud": ["vgate", "someone-else"]}
    r = _rejected(portal, caplog)
    assert r.status_code == 400
    assert "audience (vgate, someone-else) does not include vgate-portal" in r.text
    assert "portal.client_id" in r.text
    assert "does not include vgate-portal" in _rejections(caplog)[0]


def test_expired_token_is_a_400_that_says_so(portal, op, caplog):
    now = int(time.time())
    op.overrides = {"iat": now - 7200, "exp": now - 3600}  # beyond the 30 s leeway
    r = _rejected(portal, caplog)
    assert r.status_code == 400
    assert "ID token had expired when it arrived" in r.text
    assert "clocks" in r.text


def test_foreign_nonce_is_a_400(portal, op, caplog):
    op.overrides = {"nonce": "from-another-sign-in"}
    r = _rejected(portal, caplog)
    assert r.status_code == 400 and "nonce does not belong to this sign-in" in r.text


def test_unpublished_signing_key_is_a_400(portal, op, caplog):
    op.sign_with_unknown_key = True
    r = _rejected(portal, caplog)
    assert r.status_code == 400 and "signature does not verify" in r.text


def test_unverified_email_is_a_400_that_says_so(portal, op, caplog):
    op.overrides = {"email_verified": False}
    r = _rejected(portal, caplog)
    assert r.status_code == 400 and "email_verified is false" in r.text


def test_a_refused_code_exchange_is_a_400(portal, op, caplog):
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        r = c.get(portal + "/login")
        back = c.get(r.headers["location"]).headers["location"]
        first = c.get(back)
        assert first.status_code == 303  # signed in; now replay the same answer
        r = c.get(portal + "/login")
        state = httpx.URL(r.headers["location"]).params["state"]
        replay = httpx.URL(back).copy_set_param("state", state)
        r = c.get(str(replay))
    assert r.status_code == 400
    assert "refused to complete the sign-in: invalid_grant" in r.text


def test_idp_down_at_the_code_exchange_is_a_502(tmp_path):
    """The only 502: the IdP cannot be reached (here: it stops between /auth and /token)."""
    with CraftedProvider() as lone:
        config = portal_config(tmp_path, lone.issuer, free_port())
        with (
            GatewayThread(tmp_path / "gw", config) as gw,
            httpx.Client(timeout=10, follow_redirects=False) as c,
        ):
            r = c.get(gw.url + "/login")
            back = c.get(r.headers["location"]).headers["location"]
            lone.stop()
            r = c.get(back)
    assert r.status_code == 502
    assert "could not be reached" in r.text
