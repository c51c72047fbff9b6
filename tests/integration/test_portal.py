"""The SSO portal over HTTP: sign-in through the real IdP, tenants and roles from the
policy engine, kubeconfig access control, cookie flags, CSRF-safe logout."""

from __future__ import annotations

import html
import json
import logging
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.registry import TenantState
from tests.support import sso_world
from tests.support.tiers import tool_missing


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sso_world.SSOWorld]:
    yield from sso_world.running(tmp_path_factory.mktemp("portal"))


def _client(world) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(world.ca.cert_file))
    return httpx.Client(verify=ctx, timeout=10.0, follow_redirects=False)


def sign_in(world, c: httpx.Client, user: str) -> httpx.Response:
    """Open the portal, go through the IdP's forms as `user`, come back; the final page."""
    r = c.get(world.url + "/")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = c.get(world.url + "/login")
    assert r.status_code == 302 and r.headers["location"].startswith(world.idp.issuer)
    callback = world.url + "/oauth2/callback"
    params = world.idp._walk(
        c, c.get(r.headers["location"]), user, sso_world.USERS[user]["password"], stop_at=callback
    )
    assert isinstance(params, dict), params
    r = c.get(callback, params=params)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/"
    return c.get(world.url + "/")


def _tenants(page: httpx.Response) -> dict[str, list[str]]:
    found = {}
    for m in re.finditer(
        r'<section class="tenant" id="tenant-([a-z0-9-]+)">(.*?)</section>', page.text, re.S
    ):
        found[m.group(1)] = re.findall(r'<span class="role">([^<]+)</span>', m.group(2))
    return found


def test_each_user_sees_exactly_their_tenants_and_roles(world):
    expected = {
        "alice": {"tenant1": ["cluster-admin"]},
        "bob": {"tenant1": ["view"]},
        "carol": {"tenant1": ["view"], "tenant2": ["cluster-admin"]},
        "mallory": {},
    }
    for user, tenants in expected.items():
        with _client(world) as c:
            page = sign_in(world, c, user)
            assert page.status_code == 200
            assert f"oidc:{user}@example.com" in page.text
            assert _tenants(page) == tenants, user
            if not tenants:
                assert 'id="no-tenants"' in page.text


def _state(page: httpx.Response, tenant: str) -> tuple[str, str]:
    """The state badge of `tenant` and the line explaining it ("" when Ready)."""
    badge = re.search(rf'id="state-{tenant}">([^<]+)<', page.text)
    detail = re.search(rf'id="state-detail-{tenant}">([^<]+)<', page.text)
    assert badge is not None, page.text
    return badge.group(1), html.unescape(detail.group(1)) if detail else ""


def test_a_tenant_not_ready_is_listed_with_its_state(world):
    """A tenant the lifecycle knows but that is not Ready (the states the route sync writes
    into the registry) is listed for whoever has a role there, with its state — a user
    whose only tenant it is no longer reads "You have no role on any tenant yet"."""
    registry, policy = world.gateway.gateway.registry, world.gateway.gateway.policy
    error = (  # the host's: a path, a host-cluster name; never shown to the tenant's users
        "apiserver: kube-apiserver of tenant3 not ready after 60s: [Errno 13] Permission "
        "denied: '/var/lib/vgate/local/tenants/tenant3/pki' on etcd-0.vgate-system.svc"
    )
    world.gateway.call(policy.set_stored_roles, "tenant3", {"cluster-admin": ["oidc:nobody"]})
    world.gateway.call(
        registry.set_states,
        {
            "tenant3": TenantState(
                "Provisioning", "apiserver", error, failures=2, reference="5be0c1a2f9"
            ),
            "tenant4": TenantState("Provisioning", "certificates"),
            "tenant1": TenantState("Provisioning", "apiserver"),
        },
    )  # routable: being upgraded
    world.gateway.call(policy.set_stored_roles, "tenant4", {"view": ["oidc:nobody"]})
    try:
        with _client(world) as c:
            page = sign_in(world, c, "mallory")
            assert 'id="no-tenants"' not in page.text
            assert _tenants(page) == {"tenant3": ["cluster-admin"], "tenant4": ["view"]}
            assert _state(page, "tenant3") == (
                "Failing",
                (
                    'Provisioning, step "apiserver"; failed 2 times in a row, error '
                    "reference 5be0c1a2f9. "
                    "The lifecycle manager keeps retrying; if this persists, ask a platform "
                    "engineer."
                ),
            )
            for secret in ("/var/lib", "Errno", "etcd-0", "not ready after"):
                assert secret not in page.text
            label, detail = _state(page, "tenant4")
            assert label == "Provisioning"
            assert detail.startswith('Provisioning, step "certificates". kubectl answers')
            r = c.get(world.url + "/tenants/tenant4/kubeconfig?form=path")
            assert r.status_code == 200 and "/clusters/tenant4" in r.text
        with _client(world) as c:  # no role there: not listed, its state not shown
            page = sign_in(world, c, "alice")
            assert set(_tenants(page)) == {"tenant1"}
            assert _state(page, "tenant1") == (
                "Provisioning",
                'Provisioning, step "apiserver". It answers meanwhile.',
            )
            assert error not in page.text
            world.gateway.call(registry.set_states, {})
            assert _state(c.get(world.url + "/"), "tenant1") == ("Ready", "")
    finally:
        world.gateway.call(registry.set_states, {})
        for tenant in ("tenant3", "tenant4"):
            world.gateway.call(policy.set_stored_roles, tenant, None)


def test_gateway_endpoints_stay_in_front_of_the_portal(world):
    with _client(world) as c:
        assert c.get(world.url + "/healthz").text == "ok"
        assert c.get(world.url + "/readyz").status_code == 200
        # /metrics names every tenant: only on the metrics listener, never the main port
        assert "vgate_requests_total" not in c.get(world.url + "/metrics").text
        assert "vgate_requests_total" in c.get(world.gateway.metrics_url + "/metrics").text
        r = c.get(world.url + "/clusters/tenant1/api")  # a tenant path: the gateway's 401
        assert r.status_code == 401 and r.json()["kind"] == "Status"


def test_session_cookie_flags_and_page_headers(world):
    with _client(world) as c:
        r = c.get(world.url + "/login")
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("vgate_portal=")
        for flag in ("httponly", "secure", "samesite=lax", "path=/", "max-age=600"):
            assert flag in cookie.lower(), cookie
        page = sign_in(world, c, "alice")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text  # the essential flow needs no JavaScript
        assert 'name="viewport"' in page.text


def test_every_portal_answer_has_the_security_headers(world):
    """The redirect to the IdP (state, nonce, the PKCE verifier's cookie) is never stored,
    and a request starlette itself refuses (a sign-out form with too many fields) gets the
    portal's page with the same headers, not a bare text."""
    with _client(world) as c:
        r = c.get(world.url + "/login")
        assert r.status_code == 302 and r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
        page = sign_in(world, c, "alice")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        fields = {f"f{i}": "x" for i in range(8)} | {"csrf": csrf}
        r = c.post(world.url + "/logout", data=fields)
        assert r.status_code == 400, r.text
        assert "The portal could not read this request." in r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert c.get(world.url + "/").status_code == 200  # the refused form signed no one out


def test_kubeconfig_download_and_403(world, tmp_path):
    with _client(world) as c:
        sign_in(world, c, "alice")
        for form, server in (
            ("host", f"https://tenant1.k8s.test:{world.gateway.port}"),
            ("path", f"{world.url}/clusters/tenant1"),
        ):
            r = c.get(f"{world.url}/tenants/tenant1/kubeconfig", params={"form": form})
            assert r.status_code == 200
            assert "attachment" in r.headers["content-disposition"]
            kc = yaml.safe_load(r.text)
            assert kc["clusters"][0]["cluster"]["server"] == server
            assert kc["clusters"][0]["cluster"]["certificate-authority-data"]
            user = kc["users"][0]["user"]
            assert set(user) == {"exec"}  # no token, no secret
            assert user["exec"]["apiVersion"] == "client.authentication.k8s.io/v1"
            assert user["exec"]["args"][:3] == [
                "login",
                f"--issuer={world.idp.issuer}",
                "--client-id=vgate",
            ]
        r = c.get(f"{world.url}/tenants/tenant2/kubeconfig", params={"form": "path"})
        assert r.status_code == 403
        r = c.get(f"{world.url}/tenants/nope/kubeconfig")
        assert r.status_code == 403
    with _client(world) as anonymous:
        r = anonymous.get(f"{world.url}/tenants/tenant1/kubeconfig")
        assert r.status_code == 303 and "apiVersion" not in r.text


def test_logout_needs_the_csrf_token(world):
    with _client(world) as c:
        page = sign_in(world, c, "alice")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post(world.url + "/logout", data={"csrf": "forged"})
        assert r.status_code == 403
        assert c.get(world.url + "/").status_code == 200  # still signed in
        r = c.get(world.url + "/logout")
        assert r.status_code == 405
        r = c.post(world.url + "/logout", data={"csrf": csrf})
        assert r.status_code == 200 and "Signed out" in r.text
        r = c.get(world.url + "/")
        assert r.status_code == 303 and r.headers["location"] == "/login"


def test_a_copied_session_cookie_stops_working_after_sign_out(world):
    """Sign-out ends the session on the server: a copy of the cookie taken before (another
    browser, a stolen cookie) is refused afterwards, for the page and for kubeconfigs."""
    with _client(world) as c:
        page = sign_in(world, c, "alice")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        copied = c.cookies["vgate_portal"]
        with _client(world) as thief:
            thief.cookies.set("vgate_portal", copied)
            assert thief.get(world.url + "/").status_code == 200  # the copy works ...
            r = c.post(world.url + "/logout", data={"csrf": csrf})
            assert r.status_code == 200 and "Signed out" in r.text
            r = thief.get(world.url + "/")  # ... until the sign-out
            assert r.status_code == 303 and r.headers["location"] == "/login"
            thief.cookies.set("vgate_portal", copied)
            r = thief.get(f"{world.url}/tenants/tenant1/kubeconfig", params={"form": "path"})
            assert r.status_code == 303 and "apiVersion" not in r.text
            thief.cookies.set("vgate_portal", copied)
            r = thief.post(world.url + "/logout", data={"csrf": csrf})
            assert r.status_code == 200  # signing a dead session out again is harmless


def test_a_nonce_from_another_sign_in_is_a_400_that_names_it(world, caplog):
    """Code injection with the real IdP: an authorization answer whose ID token carries a
    nonce this browser's sign-in did not send (same state and PKCE challenge)."""
    callback = world.url + "/oauth2/callback"
    with _client(world) as c:
        r = c.get(world.url + "/login")
        request = dict(httpx.URL(r.headers["location"]).params)
        request["nonce"] = "the-attackers-nonce"
        params = world.idp._walk(
            c,
            c.get(world.idp.issuer + "/auth", params=request),
            "alice",
            sso_world.USERS["alice"]["password"],
            stop_at=callback,
        )
        assert isinstance(params, dict) and "code" in params, params
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vgate.portal"):
            r = c.get(callback, params=params)
        assert r.status_code == 400, r.text
        assert "nonce does not belong to this sign-in" in r.text
        assert "could not be reached" not in r.text
        assert c.get(world.url + "/").status_code == 303  # not signed in
    logged = [m for m in caplog.messages if "sign-in rejected (bad_nonce)" in m]
    assert len(logged) == 1, caplog.messages


def test_an_answer_naming_another_issuer_is_refused(world, caplog):
    """RFC 9207 mix-up defence: the real IdP names itself in `iss` on the callback; an
    answer naming another issuer (meant for a sign-in at another IdP), or none although
    the IdP's metadata promises it, is a 400 that says so, and nobody is signed in."""
    callback = world.url + "/oauth2/callback"
    metadata = httpx.get(world.idp.issuer + "/.well-known/openid-configuration").json()
    assert metadata["authorization_response_iss_parameter_supported"] is True
    for iss, says in (
        ("https://evil.example", "comes from another identity provider (https://evil.example)"),
        (None, "does not name its identity provider (iss)"),
    ):
        with _client(world) as c:
            r = c.get(world.url + "/login")
            params = world.idp._walk(
                c,
                c.get(r.headers["location"]),
                "alice",
                sso_world.USERS["alice"]["password"],
                stop_at=callback,
            )
            assert params["iss"] == world.idp.issuer  # the real IdP sends it
            params.pop("iss")
            if iss is not None:
                params["iss"] = iss
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="vgate.portal"):
                r = c.get(callback, params=params)
            assert r.status_code == 400, r.text
            assert says in html.unescape(r.text)
            assert c.get(world.url + "/").status_code == 303  # not signed in
            assert any("sign-in refused" in m for m in caplog.messages), caplog.messages


def test_idp_down_at_the_code_exchange_is_the_only_502(world):
    callback = world.url + "/oauth2/callback"
    with _client(world) as c:
        r = c.get(world.url + "/login")
        params = world.idp._walk(
            c,
            c.get(r.headers["location"]),
            "bob",
            sso_world.USERS["bob"]["password"],
            stop_at=callback,
        )
        world.idp.stop()
        try:
            r = c.get(callback, params=params)
        finally:
            world.idp.start()
    assert r.status_code == 502 and "could not be reached" in r.text


def test_install_hint_and_the_private_ca(world):
    with _client(world) as c:
        page = sign_in(world, c, "alice")
        hint = re.search(r'<p class="muted" id="install-hint">(.*?)</p>', page.text, re.S)
        assert hint, page.text
        assert "pip install vgate" not in page.text  # there is no such PyPI distribution
        assert "not published on PyPI" in hint.group(1)
        assert "<code>pip install -e .</code>" in hint.group(1)
        assert 'id="trust-ca"' in page.text and 'href="/ca.crt"' in page.text
        ca = c.get(world.url + "/ca.crt")  # no sign-in needed: it is public
    assert ca.status_code == 200 and ca.content == world.ca.cert_file.read_bytes()
    cert = x509.load_pem_x509_certificate(ca.content)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert fingerprint in page.text
    assert "update-ca-certificates" in page.text and "Cert:\\CurrentUser\\Root" in page.text
    # Chrome and Chromium on Linux read their own NSS store, not the system's
    assert "certutil -d sql:$HOME/.pki/nssdb" in page.text


def test_callback_rejects_foreign_state_and_reports_denial(world):
    with _client(world) as c:
        c.get(world.url + "/login")
        r = c.get(world.url + "/oauth2/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 400 and "does not belong" in r.text
    with _client(world) as c:
        r = c.get(world.url + "/login")
        resp = c.get(r.headers["location"])
        while resp.is_redirect and "/interaction/" not in resp.headers["location"]:
            resp = c.get(urljoin(str(resp.url), resp.headers["location"]))
        interaction = urljoin(str(resp.url), resp.headers["location"])
        resp = c.get(interaction.rstrip("/") + "/abort")  # the user cancels at the IdP
        while resp.is_redirect and not resp.headers["location"].startswith(world.url):
            resp = c.get(urljoin(str(resp.url), resp.headers["location"]))
        r = c.get(resp.headers["location"])
        assert r.status_code == 403 and "Sign-in cancelled" in r.text
        assert c.get(world.url + "/").status_code == 303  # not signed in


def test_no_codes_or_tokens_in_the_audit_log(world):
    with _client(world) as c:
        sign_in(world, c, "bob")
    audit = (world.dir / "audit.log").read_text()
    assert "/oauth2/callback" in audit
    assert "code=" not in audit and "state=" not in audit and "eyJ" not in audit


def test_the_audit_log_names_the_portal_user(world):
    """The sign-in, the tenant page and each kubeconfig download are audited with the
    user the portal signed in (they were audited as nobody); a request without a session
    stays anonymous."""
    with _client(world) as c:
        sign_in(world, c, "carol")
        c.get(f"{world.url}/tenants/tenant2/kubeconfig", params={"form": "path"})
    with _client(world) as anonymous:
        anonymous.get(f"{world.url}/tenants/tenant2/kubeconfig", params={"form": "host"})
    carol = "oidc:carol@example.com"  # the only user of tenant2 in this module but alice
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in (world.dir / "audit.log").read_text().splitlines()]
        downloads = [
            a
            for a in lines
            if a["path"] == "/tenants/tenant2/kubeconfig" and a["user"] in (carol, None)
        ]
        if len(downloads) == 2:
            break
        time.sleep(0.05)
    assert [(a["status"], a["user"]) for a in downloads] == [(200, carol), (303, None)]
    assert downloads[0]["uid"] == "carol" and downloads[0]["issuer"] == world.idp.issuer
    signed_in = [a for a in lines if a["path"] == "/oauth2/callback" and a["user"] == carol]
    assert signed_in and signed_in[-1]["status"] == 303
    assert any(a["path"] == "/" and a["status"] == 200 and a["user"] == carol for a in lines)


def test_paste_ready_bash_command_keeps_the_existing_kubeconfig(world, tmp_path):
    with _client(world) as c:
        page = sign_in(world, c, "alice")
    bash = re.search(r'<pre class="bash">(.*?)</pre>', page.text, re.S).group(1)
    bash = bash.replace("&#39;", "'").replace("&amp;", "&").replace("&#34;", '"')
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mine", "cluster": {"server": "https://mine.example:6443"}}],
                "users": [{"name": "me", "user": {"token": "keep-me"}}],
                "contexts": [{"name": "mine", "context": {"cluster": "mine", "user": "me"}}],
                "current-context": "mine",
            }
        )
    )
    env = {**world.plugin_env("alice", cache=tmp_path / "cache"), "KUBECONFIG": str(kubeconfig)}
    r = subprocess.run(["bash", "-c", bash], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    merged = yaml.safe_load(kubeconfig.read_text())
    assert {c["name"] for c in merged["clusters"]} == {"mine", "vgate-tenant1"}
    assert {u["name"]: u["user"].get("token") for u in merged["users"]}["me"] == "keep-me"
    assert merged["current-context"] == "vgate-tenant1"
    # hostname form: kubectl resolves tenant1.k8s.test through a private /etc/hosts
    why = _host_mode_unavailable()
    if why:
        tool_missing(why)
    r = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind {world.dir / 'hosts'} /etc/hosts && exec kubectl auth whoami",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "oidc:alice@example.com" in r.stdout


def _host_mode_unavailable() -> str | None:
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "hostname routing needs root and unshare(1) for a private /etc/hosts"
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return "unshare -m is not permitted here"
    return None
