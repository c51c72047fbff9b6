"""The tenants.vgate.io CRD in the chart's crds/, judged by a real API server: it is
established, stores what the kubernetes tenant store writes and gives it back unchanged,
refuses what its schema forbids, and its printer columns show the written fields. What helm
ships and the store's Role are `tests/integration/deploy/test_tenant_crd_chart.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.lifecycle.model import (
    Condition,
    Phase,
    RouteInfo,
    TenantRecord,
    TenantSpec,
    TenantStatus,
)
from gateway.lifecycle.stores import kubernetes as kube_store
from tests.support.kube import ApiServer

CRD_FILE = Path(__file__).resolve().parents[3] / "deploy/helm/vgate/crds/tenants.vgate.io.yaml"
NAMESPACE = "vgate-crd"  # the CRD tests' own, beside the other chart tests' namespaces


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def store_api(kube_api: ApiServer, chart_crds: Path) -> ApiServer:
    """The API server with the chart's CRD established and a namespace for these tests."""
    kube_api.kubectl("create", "namespace", NAMESPACE)
    return kube_api


def busy_record() -> TenantRecord:
    return TenantRecord(
        spec=TenantSpec(
            name="team-a",
            admin_groups=["a"],
            view_groups=["v"],
            ha=3,
            quota={"pods": "20"},
            token_passthrough=True,
            service_account_issuer="https://kubernetes.default.svc.cluster.local",
            values={"sync": {"toHost": {}}},
        ),
        status=TenantStatus(
            phase=Phase.ready,
            step=None,
            conditions=[Condition(type="Ready", status="True", reason="Converged")],
            route=RouteInfo(
                server="https://team-a.vcluster-team-a.svc:443",
                token_file="/t",
                token_passthrough=True,
                service_account_issuer="https://kubernetes.default.svc.cluster.local",
            ),
        ),
        version=7,
        generation=3,
        created_at=1.5,
        last_activity=2.5,
    )


def create(api: ApiServer, obj: dict[str, Any]) -> Any:
    """Create `obj` as the store would (no resourceVersion); the CompletedProcess."""
    return api.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)


def test_the_api_server_establishes_the_crd(store_api: ApiServer) -> None:
    status = json.loads(store_api.kubectl("get", "crd", "tenants.vgate.io", "-o", "json").stdout)[
        "status"
    ]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert status["acceptedNames"]["kind"] == kube_store.KIND


@pytest.mark.parametrize(
    "record",
    [
        busy_record(),
        TenantRecord(spec=TenantSpec(name="t", admin_groups=["a"]), version=1, generation=1),
        TenantRecord(
            spec=TenantSpec(name="failing", admin_groups=["a"]),
            status=TenantStatus(
                phase=Phase.provisioning,
                step="apiserver",
                last_error="apiserver: open /srv/vgate/tenants/failing/pki: permission denied",
                error_reference="0123456789",
                failures=2,
            ),
            version=4,
            generation=1,
        ),
    ],
    ids=["busy", "new", "failing"],
)
def test_what_the_store_writes_is_stored_and_reads_back(
    store_api: ApiServer, record: TenantRecord
) -> None:
    written = kube_store.object_of(record, NAMESPACE, None)
    proc = create(store_api, written)
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(
        store_api.kubectl("-n", NAMESPACE, "get", "tenant", record.name, "-o", "json").stdout
    )
    # nothing pruned or defaulted away
    assert (stored["spec"], stored["status"]) == (written["spec"], written["status"])
    assert kube_store.record_of(stored) == record


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("desired", "sleeping", 'spec.desired: Unsupported value: "sleeping"'),
        (
            "admin_groups",
            [],
            "spec.admin_groups: Invalid value: 0: spec.admin_groups in body "
            "should have at least 1 items",
        ),
        ("ha", 9, "spec.ha: Invalid value: 9: spec.ha in body should be less than or equal to 7"),
        (
            "token_passthrough",
            "yes",
            'spec.token_passthrough: Invalid value: "string": spec.token_passthrough in body '
            "must be of type boolean",
        ),
        (
            "service_account_issuer",
            "i" * 1025,
            "spec.service_account_issuer: Too long: may not be longer than 1024",
        ),
    ],
    ids=["desired", "admin_groups", "ha", "token_passthrough", "service_account_issuer"],
)
def test_the_schema_refuses_what_vgate_would_never_write(
    store_api: ApiServer, field: str, value: Any, message: str
) -> None:
    bad = kube_store.object_of(
        TenantRecord(
            spec=TenantSpec(name=f"bad-{field.replace('_', '-')}", admin_groups=["a"]),
            version=1,
            generation=1,
        ),
        NAMESPACE,
        None,
    )
    bad["spec"][field] = value
    proc = create(store_api, bad)
    assert proc.returncode != 0
    assert message in proc.stderr


def test_printer_columns_show_the_written_fields(store_api: ApiServer) -> None:
    record = TenantRecord(
        spec=TenantSpec(name="columns", admin_groups=["a"]),
        status=TenantStatus(phase=Phase.provisioning, step="helm-install"),
        version=1,
        generation=1,
    )
    proc = create(store_api, kube_store.object_of(record, NAMESPACE, None))
    assert proc.returncode == 0, proc.stderr
    header, row = store_api.kubectl(
        "-n", NAMESPACE, "get", "tenants", "columns"
    ).stdout.splitlines()
    shown = dict(zip(header.split(), row.split(), strict=True))
    assert shown == {
        "NAME": "columns",
        "DESIRED": "running",
        "PHASE": "Provisioning",
        "STEP": "helm-install",
        "KUBERNETES": record.spec.k8s_version,
        "AGE": shown["AGE"],
    }


# What the kubernetes store and the credential mirror call, per resource (see kube_store.py
# and credential_secrets.py): the Role must allow these and nothing more.
USED = {
    ("vgate.io", "tenants"): {"get", "list", "watch", "create", "update", "delete"},
    ("", "secrets"): {"get", "list", "create", "patch", "delete"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
}
