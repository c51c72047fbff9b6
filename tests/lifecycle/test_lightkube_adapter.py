"""`LightkubeAPI` (the real client adapter) against the kube-apiserver stand-in."""

from __future__ import annotations

import pytest

from gateway.lifecycle.connect import connect
from tests.fakekube import Caller, FakeKube


@pytest.fixture
def fake():
    kube = FakeKube(name="host", tokens={
        "admin": Caller(user="admin", groups=("system:masters",))}).start()
    yield kube
    kube.stop()


async def test_apply_get_list_patch_delete(fake):
    api = await connect(server=fake.url, token="admin")
    try:
        labels = {"vgate.io/tenant": "t1"}
        await api.apply({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": "vcluster-t1", "labels": labels}})
        ns = await api.get("v1", "Namespace", "vcluster-t1")
        assert ns["metadata"]["labels"]["vgate.io/tenant"] == "t1"
        await api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "a", "namespace": "vcluster-t1",
                                      "labels": labels}, "data": {"k": "v"}})
        await api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "b", "namespace": "vcluster-t1"}})
        found = await api.list("v1", "ConfigMap", "vcluster-t1", labels)
        assert [o["metadata"]["name"] for o in found] == ["a"]
        await api.merge_patch("v1", "ConfigMap", "a", "vcluster-t1",
                              {"metadata": {"annotations": {"loft.sh/paused": "true"}}})
        live = await api.get("v1", "ConfigMap", "a", "vcluster-t1")
        assert live["metadata"]["annotations"] == {"loft.sh/paused": "true"}
        assert live["data"] == {"k": "v"}
        await api.delete("v1", "ConfigMap", "a", "vcluster-t1")
        await api.delete("v1", "ConfigMap", "a", "vcluster-t1")  # already gone: fine
        assert await api.get("v1", "ConfigMap", "a", "vcluster-t1") is None
    finally:
        await api.close()


async def test_a_refused_call_raises(fake):
    api = await connect(server=fake.url, token="nobody")
    try:
        with pytest.raises(Exception, match=r"401|Unauthorized"):
            await api.get("v1", "Namespace", "default")
    finally:
        await api.close()
