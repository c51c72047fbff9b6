"""A real Chromium (Debian package, driven by playwright) signs in through the portal,
sees exactly its tenants, downloads a kubeconfig, and real kubectl uses it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import sso_world
from tests.support.chromium import ARTIFACTS, launch, missing, sign_in_at_idp
from tests.support.tiers import tool_missing

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sso_world.SSOWorld]:
    why = missing()
    if why:
        tool_missing(why)
    yield from sso_world.running(tmp_path_factory.mktemp("browser"))


def test_chromium_signs_in_downloads_and_kubectl_uses_it(world, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = launch(
            pw,
            tmp_path / "profile",
            ignore_https_errors=True,
            accept_downloads=True,
            viewport={"width": 390, "height": 844},
        )  # a phone
        try:
            page = context.new_page()
            page.set_default_timeout(15000)
            page.goto(world.url + "/")
            sign_in_at_idp(page, world.idp.issuer, "carol", sso_world.USERS["carol"]["password"])
            page.wait_for_url(world.url + "/")
            assert page.inner_text("#user") == "oidc:carol@example.com"
            tenants = page.eval_on_selector_all("section.tenant", "els => els.map(e => e.id)")
            assert tenants == ["tenant-tenant1", "tenant-tenant2"]
            roles = {t: page.inner_text(f"#tenant-{t} .role") for t in ("tenant1", "tenant2")}
            assert roles == {"tenant1": "view", "tenant2": "cluster-admin"}
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "portal-tenants.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot of the tenant page: {shot}")
            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["vgate_portal"]
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"

            with page.expect_download() as download:
                page.click("#download-tenant2-path")
            kubeconfig = tmp_path / "kubeconfig"
            download.value.save_as(kubeconfig)

            forbidden = page.goto(world.url + "/tenants/nope/kubeconfig?form=path")
            assert forbidden is not None and forbidden.status == 403

            page.goto(world.url + "/")
            page.click("#trust-ca summary")  # "Did your browser warn about ...?"
            with page.expect_download() as ca_download:
                page.click("#trust-ca a[href='/ca.crt']")
            assert Path(ca_download.value.path()).read_bytes() == world.ca.cert_file.read_bytes()
            copied = [c for c in context.cookies() if c["name"] == "vgate_portal"]
            page.click("header button[type=submit]")  # sign out (POST + CSRF token)
            page.wait_for_selector("#message")
            assert "signed out" in page.inner_text("#message")
            context.add_cookies(copied)  # the session cookie as copied before the sign-out
            replay = page.request.get(world.url + "/", max_redirects=0)
            assert replay.status == 303 and replay.headers["location"] == "/login"
        finally:
            context.close()

    env = world.plugin_env("carol", cache=tmp_path / "cache")
    r = world.kubectl(kubeconfig, "auth", "whoami", "-o", "json", env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)["status"]["userInfo"]
    assert info["username"] == "oidc:carol@example.com"
    assert "vgate:cluster-admin" in info["groups"]
    r = world.kubectl(kubeconfig, "get", "namespaces", env=env)
    assert r.returncode == 0, r.stderr
