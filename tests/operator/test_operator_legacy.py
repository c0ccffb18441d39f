"""The legacy sync CronJob against a real kube-apiserver: admission of `spec.legacy`, the
CronJob the operator applies for mirror/reconcile (and removes for none), LegacySynced."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Servers
from tests.harness.controlplane import ApiError, ControlPlane
from tests.operator.operator_fixtures import (
    GROUP_PATH,
    IMAGE,
    OperatorThread,
    await_tenant_ready,
    condition,
    create,
    create_namespace,
    database_namespace,
    eventually,
    get,
    get_resource,
    operator_settings,
    patch,
    tenant_document,
)

PREFIX = "tglgy"
CLAIM = "legacy-files"
LEGACY = {"mode": "reconcile", "extractsClaim": CLAIM, "schedule": "30 3 * * *",
          "toleranceMicros": 5000, "tolerancePpm": 100}


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorThread]:
    settings = operator_settings(control_plane.kubeconfig, (f"{PREFIX}-*",))
    with OperatorThread(settings) as running:
        yield running


@pytest.fixture
def ns(control_plane: ControlPlane, servers: Servers) -> str:
    return database_namespace(control_plane, PREFIX, servers.app_dsn, servers.owner_dsn)


@pytest.fixture
def claim(control_plane: ControlPlane, ns: str) -> Iterator[str]:
    """The shared volume a platform engineer provides: a claim bound to a static volume (the
    test plane has no provisioner; kwok runs no container, so nothing is mounted)."""
    cp, volume = control_plane, f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    cp.api("POST", "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": f"/srv/{volume}"},
                 "claimRef": {"namespace": ns, "name": CLAIM}}})
    cp.api("POST", f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}})
    try:
        yield CLAIM
    finally:
        cp.api("DELETE", f"/api/v1/persistentvolumes/{volume}")


def _refusal(cp: ControlPlane, document: dict[str, Any]) -> str:
    with pytest.raises(ApiError) as refused:
        create(cp, document)
    assert refused.value.status == 422, refused.value
    return refused.value.body


def test_an_invalid_legacy_spec_is_refused_at_admission_naming_the_field(
        control_plane: ControlPlane) -> None:
    # a namespace the operator does not serve: only the API server speaks here
    cp, ns = control_plane, create_namespace(control_plane, f"{PREFIX}adm")
    no_claim = _refusal(cp, tenant_document("de", ns, legacy={"mode": "reconcile"}))
    assert "spec.legacy" in no_claim
    assert "legacy.extractsClaim is required when legacy.mode is mirror or reconcile" in no_claim
    bad_cron = _refusal(cp, tenant_document("de", ns, legacy={
        "mode": "mirror", "extractsClaim": CLAIM, "schedule": "every night"}))
    assert "spec.legacy.schedule" in bad_cron
    assert "legacy.schedule must be a cron expression" in bad_cron
    out_of_range = _refusal(cp, tenant_document("de", ns, legacy={
        "mode": "mirror", "extractsClaim": CLAIM, "schedule": "0 24 * * *"}))
    assert "spec.legacy.schedule" in out_of_range
    bad_claim = _refusal(cp, tenant_document("de", ns, legacy={
        "mode": "mirror", "extractsClaim": "Legacy_Files"}))
    assert "spec.legacy.extractsClaim" in bad_claim
    tolerance = _refusal(cp, tenant_document("de", ns, legacy={
        "mode": "reconcile", "extractsClaim": CLAIM, "tolerancePpm": 2_000_000}))
    assert "spec.legacy.tolerancePpm" in tolerance
    # mode none needs nothing, and the defaults are filled in
    created = create(cp, tenant_document("de", ns, legacy={"mode": "none"}))
    assert created["spec"]["legacy"] == {"mode": "none", "schedule": "15 4 * * *",
                                         "amountUnit": "micro", "toleranceMicros": 0,
                                         "tolerancePpm": 0}
    cp.api("DELETE", f"/api/v1/namespaces/{ns}")


async def test_reconcile_mode_gets_a_sync_cronjob_that_mode_none_removes(
        operator: OperatorThread, control_plane: ControlPlane, ns: str, claim: str,
        tenant_name: str) -> None:
    cp = control_plane
    tenant = create(cp, tenant_document(tenant_name, ns, legacy=LEGACY))
    path = f"/apis/batch/v1/namespaces/{ns}/cronjobs/{tenant_name}-legacy"
    cronjob = await eventually(lambda: get(cp, path), "the legacy sync CronJob")
    owner = cronjob["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "Tenant", tenant["metadata"]["uid"], True)
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == (
        "30 3 * * *", "Europe/Berlin", "Forbid")
    assert spec["suspend"] is False
    job = spec["jobTemplate"]["spec"]
    assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [3]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["args"] == ["assurance", "sync", "--dir", "/legacy", "--unit", "micro",
                                 "--reconcile", "--tolerance-micros", "5000",
                                 "--tolerance-ppm", "100"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TOLLGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tenant-db", "key": "dsn"}
    assert container["envFrom"] == [{"configMapRef": {"name": f"{tenant_name}-config"}}]
    assert {"name": "legacy", "mountPath": "/legacy"} in container["volumeMounts"]
    assert {"name": "legacy", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
    assert pod["serviceAccountName"] == f"{tenant_name}-tollgate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # The schedule does not hold Ready back; LegacySynced says it has not run yet.
    await await_tenant_ready(cp, ns, tenant_name, generation=1)
    synced = condition(get_resource(cp, "Tenant", ns, tenant_name), "LegacySynced")
    assert (synced["status"], synced["reason"]) == ("Unknown", "LegacySyncScheduled")

    # Run it now, as an engineer would; kwok completes the Pod, the operator sees the Job.
    cp.kubectl("create", "job", f"{tenant_name}-legacy-now",
               f"--from=cronjob/{tenant_name}-legacy", "-n", ns)

    def completed() -> dict[str, Any] | None:
        found = condition(get_resource(cp, "Tenant", ns, tenant_name), "LegacySynced")
        return found if found.get("status") == "True" else None

    synced = await eventually(completed, "LegacySynced True", 60)
    assert synced["reason"] == "Synced"
    assert f"Job {tenant_name}-legacy-now of CronJob {tenant_name}-legacy completed" in (
        synced["message"])

    patch(cp, "Tenant", ns, tenant_name, {"spec": {"legacy": {"mode": "none"}}})
    await eventually(lambda: get(cp, path) is None, "the CronJob deleted", 30)
    jobs = f"/apis/batch/v1/namespaces/{ns}/jobs/{tenant_name}-legacy-now"
    await eventually(lambda: get(cp, jobs) is None, "its Job collected", 60)
    await await_tenant_ready(cp, ns, tenant_name, generation=2)
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert condition(body, "LegacySynced") == {}

    patch(cp, "Tenant", ns, tenant_name, {"spec": {"legacy": {"mode": "mirror"}}})
    cronjob = await eventually(lambda: get(cp, path), "the CronJob back for mirror")
    assert "--reconcile" not in cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    cp.api("DELETE", f"{GROUP_PATH}/namespaces/{ns}/tenants/{tenant_name}")
    await eventually(lambda: get_resource(cp, "Tenant", ns, tenant_name) is None,
                     "the Tenant gone (finalizer released)", 60)
    try:
        await eventually(lambda: get(cp, path) is None, "the CronJob goes with its Tenant", 60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {json.dumps((get(cp, path) or {}).get('metadata'))}"
                             ) from exc
