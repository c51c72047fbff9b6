"""`LightkubeAPI` (the real client adapter) against a real kube-apiserver: every call the
lifecycle makes, with the lightkube version pip resolves (1.x reads things the fakes never
looked at, like a TokenRequest's metadata)."""

from __future__ import annotations

import ssl
import time

import httpx
import pytest

from gateway.lifecycle.provisioning.connect import connect
from tests.support.kube import ADMIN_TOKEN, ApiServer


async def admin(kube_host: ApiServer):
    return await connect(server=kube_host.url, token=ADMIN_TOKEN, ca=kube_host.ca_file.read_bytes())


async def test_apply_get_list_patch_delete(kube_host, host_namespace):
    api = await admin(kube_host)
    ns = host_namespace
    try:
        labels = {"vgate.io/tenant": "t1"}
        await api.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
        )
        live_ns = await api.get("v1", "Namespace", ns)
        assert live_ns["metadata"]["labels"]["vgate.io/tenant"] == "t1"
        await api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": ns, "labels": labels},
                "data": {"k": "v"},
            }
        )
        await api.apply(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": ns}}
        )
        found = await api.list("v1", "ConfigMap", ns, labels)
        assert [o["metadata"]["name"] for o in found] == ["a"]
        await api.merge_patch(
            "v1", "ConfigMap", "a", ns, {"metadata": {"annotations": {"loft.sh/paused": "true"}}}
        )
        live = await api.get("v1", "ConfigMap", "a", ns)
        assert live["metadata"]["annotations"] == {"loft.sh/paused": "true"}
        assert live["data"] == {"k": "v"}
        await api.delete("v1", "ConfigMap", "a", ns)
        await api.delete("v1", "ConfigMap", "a", ns)  # already gone: fine
        assert await api.get("v1", "ConfigMap", "a", ns) is None
    finally:
        await api.close()


async def test_token_request_mints_a_service_account_token(kube_host, host_namespace):
    api = await admin(kube_host)
    try:
        await api.apply(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "gw", "namespace": host_namespace},
            }
        )
        token, expiry = await api.create_token(host_namespace, "gw", 3600)
    finally:
        await api.close()
    assert abs(expiry - (time.time() + 3600)) < 120
    # the token authenticates as that ServiceAccount
    verify = ssl.create_default_context(cafile=str(kube_host.ca_file))
    async with httpx.AsyncClient(verify=verify) as http:
        r = await http.post(
            f"{kube_host.url}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 201, r.text
    user = r.json()["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{host_namespace}:gw"


async def test_a_refused_call_raises(kube_host):
    api = await connect(server=kube_host.url, token="nobody", ca=kube_host.ca_file.read_bytes())
    try:
        with pytest.raises(Exception, match=r"401|Unauthorized"):
            await api.get("v1", "Namespace", "default")
    finally:
        await api.close()
