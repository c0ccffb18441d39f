"""Managed databases against CloudNativePG's real API: its own CRD on the session apiserver.

CloudNativePG's `Cluster` CRD (its structural schema, defaults and CEL rules, pinned in
tests/harness/cnpg.py) is applied to the session's kube-apiserver for this module only, and
removed at its end (other modules prove the "CloudNativePG not installed" path on the same
plane). No CloudNativePG controller runs here: the tests write the Cluster's status through its
status subresource with the fields and values CloudNativePG's controller and instance manager
write (api/v1/cluster_types.go, pkg/resources/status, internal/management/controller/roles),
and kubectl's strict field validation refuses any field that CRD does not have.

The operator runs with a resync interval far beyond the deadlines, so every reaction to a
Cluster's status comes from its watch of Clusters.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cnpg import cnpg_crds
from tests.harness.controlplane import ControlPlane
from tests.operator.operator_fixtures import (
    IMAGE,
    Document,
    OperatorThread,
    condition,
    create,
    create_namespace,
    events,
    eventually,
    get,
    get_resource,
    operator_settings,
    tenant_document,
)
from tollgate_core.resources import TenantSpec
from tollgate_operator import manifests
from tollgate_operator.databases import CatalogStores
from tollgate_operator.kube import KubeClient, KubeError, login
from tollgate_operator.manifests import Owner, TenantWorkload
from tollgate_operator.settings import FIELD_MANAGER
from tollgate_operator.tenant_logic import TenantController

PREFIX = "tgcnpg"
GROUP_VERSION = manifests.CNPG_API_VERSION
CLUSTERS = "clusters.postgresql.cnpg.io"
# CloudNativePG's own words (api/v1/cluster_types.go).
PHASE_FIRST_PRIMARY = "Setting up primary"
PHASE_HEALTHY = "Cluster in healthy state"
NOW = "2026-11-23T12:00:00Z"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cnpg(control_plane: ControlPlane) -> Iterator[list[Path]]:
    """CloudNativePG's Cluster CRD, served for this module only."""
    crds = cnpg_crds()
    control_plane.apply_crds(crds)
    assert get(control_plane, f"/apis/{GROUP_VERSION}") is not None
    try:
        yield crds
    finally:
        for crd in crds:  # deletes every Cluster left, then the CRD
            control_plane.kubectl("delete", "--ignore-not-found", "--wait=true",
                                  "--timeout=120s", "-f", str(crd), timeout=150)
        asyncio.run(eventually(lambda: get(control_plane, f"/apis/{GROUP_VERSION}") is None,
                               f"{GROUP_VERSION} no longer served", 60))


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, cnpg: list[Path]) -> Iterator[OperatorThread]:
    settings = dataclasses.replace(
        operator_settings(control_plane.kubeconfig, (f"{PREFIX}-*",)),
        resync_interval_s=3600.0)  # only watches (and handlers) may react within a test
    with OperatorThread(settings) as running:
        yield running


@pytest.fixture
def ns(control_plane: ControlPlane) -> str:
    return create_namespace(control_plane, PREFIX)


# --------------------------------------------------------------------------- helpers


def cluster_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP_VERSION}/namespaces/{namespace}/clusters/{name}"


def workload_of(tenant: Document) -> TenantWorkload:
    """The operator's view of a Tenant as the server holds it."""
    return TenantWorkload(Owner.of(tenant), tenant["metadata"]["namespace"],
                          TenantSpec.model_validate(tenant["spec"]), IMAGE)


def dropped(sent: Any, stored: Any, path: str = "") -> list[str]:
    """Paths of `sent` that the server did not store as sent: pruned or changed fields.

    Fields the server added (defaults, metadata) are not differences.
    """
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path or '.'}: sent an object, stored {stored!r}"]
        return [p for key, value in sent.items()
                for p in (dropped(value, stored[key], f"{path}.{key}") if key in stored
                          else [f"{path}.{key}"])]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: sent {sent!r}, stored {stored!r}"]
        return [p for i, (a, b) in enumerate(zip(sent, stored, strict=True))
                for p in dropped(a, b, f"{path}[{i}]")]
    return [] if sent == stored else [f"{path}: sent {sent!r}, stored {stored!r}"]


def patch_cluster_status(cp: ControlPlane, namespace: str, name: str,
                         status: Document) -> None:
    """Write status as CloudNativePG does: a merge patch of the status subresource.

    kubectl validates fields strictly, so a field CloudNativePG's CRD lacks is an error here.
    """
    cp.kubectl("patch", CLUSTERS, name, "-n", namespace, "--subresource=status",
               "--type=merge", "-p", json.dumps({"status": status}))


def ready_condition(ready: bool) -> Document:
    """CloudNativePG's Ready condition (pkg/resources/status SetClusterReadyCondition)."""
    if ready:
        return {"type": "Ready", "status": "True", "reason": "ClusterIsReady",
                "message": "Cluster is Ready", "lastTransitionTime": NOW}
    return {"type": "Ready", "status": "False", "reason": "ClusterIsNotReady",
            "message": "Cluster Is Not Ready", "lastTransitionTime": NOW}


def database_ready(cp: ControlPlane, namespace: str, tenant: str) -> Document:
    return condition(get_resource(cp, "Tenant", namespace, tenant), "DatabaseReady")


def env_of(container: Document) -> dict[str, Document]:
    return {item["name"]: item for item in container.get("env") or ()}


def migration_jobs(cp: ControlPlane, namespace: str, tenant: str) -> list[Document]:
    selector = f"app.kubernetes.io/instance%3D{tenant},app.kubernetes.io/component%3Dmigration"
    items: list[Document] = cp.api(
        "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector={selector}")["items"]
    return items


def job_complete(cp: ControlPlane, namespace: str, tenant: str) -> bool:
    return any(condition(job, "Complete").get("status") == "True"
               for job in migration_jobs(cp, namespace, tenant))


# --------------------------------------------------------------------------- tests


def test_cluster_names_fit_cloudnativepgs_admission_rules() -> None:
    """CloudNativePG's webhook (not running here) wants DNS-1035 names of at most 50."""
    longest = "t" + "x" * (manifests.MAX_TENANT_NAME - 1)
    assert manifests.tenant_name_error(longest) is None
    spec = TenantSpec.model_validate(tenant_document(longest, "n", database={"mode": "managed"})
                                     ["spec"])
    t = TenantWorkload(Owner("bss.tollgate.dev/v1alpha1", "Tenant", longest, "u"), "n", spec,
                       IMAGE)
    name = manifests.cnpg_cluster_name(t)
    assert name == f"{longest}-db"
    assert len(name) <= manifests.CNPG_MAX_CLUSTER_NAME


async def test_the_schema_check_sees_pruned_and_unknown_fields(
        control_plane: ControlPlane, cnpg: list[Path], ns: str) -> None:
    """Negative controls: what `dropped` and strict applies catch, on CloudNativePG's CRD."""
    cp = control_plane
    bad: Document = {
        "apiVersion": GROUP_VERSION, "kind": "Cluster",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {"instances": 1, "storage": {"size": "1Gi", "sizeInGB": 1},
                 "managed": {"roles": [{"name": "probe", "loginn": True}]}},
    }
    # A create without field validation prunes unknown fields (a warning at most) ...
    lenient = cp.kubectl("create", "--dry-run=server", "--validate=false", "-o", "json",
                         "-f", "-", input=json.dumps(bad))
    assert dropped(bad, json.loads(lenient.stdout)) == [
        ".spec.storage.sizeInGB", ".spec.managed.roles[0].loginn"]
    # ... while the operator's server-side apply is refused, with an error no retry changes.
    async with KubeClient(lambda: login(cp.kubeconfig), FIELD_MANAGER) as kube:
        with pytest.raises(KubeError) as refused:
            await kube.apply(bad)
    assert "field not declared in schema" in refused.value.message
    assert "sizeInGB" in refused.value.message and "loginn" in refused.value.message
    assert not refused.value.retryable
    assert get(cp, cluster_path(ns, "probe")) is None
    # CloudNativePG's CEL rules run too.
    both = dict(bad, spec={"instances": 1, "imageName": "postgres:18",
                           "imageCatalogRef": {"apiGroup": "postgresql.cnpg.io",
                                               "kind": "ImageCatalog", "name": "c", "major": 18}})
    proc = cp.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                      input=json.dumps(both), check=False)
    assert proc.returncode != 0
    assert "imageName and imageCatalogRef are mutually exclusive" in proc.stderr


async def test_managed_tenant_gets_a_cloudnativepg_cluster_and_waits_for_it(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    tenant = create(cp, tenant_document(tenant_name, ns, database={"mode": "managed"}))
    cluster_name = f"{tenant_name}-db"
    path = cluster_path(ns, cluster_name)
    stored = await eventually(lambda: get(cp, path), "the Cluster exists")

    # The server kept every field the operator sent (none pruned, none rewritten) ...
    t = workload_of(tenant)
    sent = manifests.cnpg_cluster(t)
    assert dropped(sent, stored) == []
    # ... and CloudNativePG's schema really processed it: its defaults are filled in.
    assert stored["spec"]["managed"]["roles"][0]["inherit"] is True
    assert stored["spec"]["managed"]["roles"][0]["connectionLimit"] == -1
    assert stored["spec"]["storage"]["resizeInUseVolumes"] is True
    # What the operator intends, as stored.
    meta, spec = stored["metadata"], stored["spec"]
    assert meta["ownerReferences"] == [{
        "apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant", "name": tenant_name,
        "uid": tenant["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "tollgate", "app.kubernetes.io/instance": tenant_name,
        "app.kubernetes.io/component": "database", "app.kubernetes.io/part-of": "tollgate",
        "app.kubernetes.io/managed-by": FIELD_MANAGER, "bss.tollgate.dev/tenant": tenant_name}
    assert spec["instances"] == 3
    assert spec["storage"]["size"] == "10Gi"
    assert spec["enableSuperuserAccess"] is False
    # bootstrap: database `tollgate` owned by `tollgate`; no `secret`, so CloudNativePG
    # generates `<cluster>-app` for the owner, which the migration Job reads.
    assert spec["bootstrap"] == {"initdb": {"database": "tollgate", "owner": "tollgate"}}
    role = spec["managed"]["roles"][0]
    assert (role["name"], role["ensure"], role["login"]) == ("tollgate_app", "present", True)
    assert (role["superuser"], role["bypassrls"]) == (False, False)  # RLS applies to it
    assert role["passwordSecret"] == {"name": f"{tenant_name}-db-app-role"}

    # The role's password Secret, as CloudNativePG reads it: basic-auth, username = role.
    secret = get(cp, f"/api/v1/namespaces/{ns}/secrets/{tenant_name}-db-app-role")
    assert secret is not None and secret["type"] == "kubernetes.io/basic-auth"
    assert base64.b64decode(secret["data"]["username"]).decode() == "tollgate_app"
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 32
    assert secret["metadata"]["ownerReferences"][0]["uid"] == tenant["metadata"]["uid"]

    # The workloads log in as the application role at CloudNativePG's read-write Service.
    api = get(cp, f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-api")
    assert api is not None
    env = env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert env["TOLLGATE_DB_PASSWORD"]["valueFrom"] == {"secretKeyRef": {
        "name": f"{tenant_name}-db-app-role", "key": "password"}}
    assert env["TOLLGATE_DATABASE_URL"]["value"] == (
        f"postgresql://tollgate_app:$(TOLLGATE_DB_PASSWORD)@{cluster_name}-rw.{ns}.svc:5432/"
        "tollgate")

    # No status yet: CloudNativePG has not seen the Cluster. No migration Job either.
    reported = await eventually(
        lambda: database_ready(cp, ns, tenant_name).get("reason") == "ClusterNotReady"
        and database_ready(cp, ns, tenant_name), "DatabaseReady=False, ClusterNotReady")
    assert reported["status"] == "False"
    assert f"{ns}/{cluster_name}" in reported["message"]
    assert "no status" in reported["message"]
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert condition(body, "CatalogSynced")["reason"] == "DatabaseNotReady"
    assert (body or {})["status"]["phase"] == "Provisioning"  # waiting, not failing
    assert migration_jobs(cp, ns, tenant_name) == []

    # CloudNativePG creates the primary (cluster_create.go: RegisterPhase).
    patch_cluster_status(cp, ns, cluster_name, {
        "phase": PHASE_FIRST_PRIMARY, "phaseReason": f"Creating primary instance {cluster_name}-1",
        "instances": 1, "readyInstances": 0, "latestGeneratedNode": 1,
        "currentPrimary": f"{cluster_name}-1", "targetPrimary": f"{cluster_name}-1",
        "writeService": f"{cluster_name}-rw", "readService": f"{cluster_name}-r",
        "conditions": [ready_condition(False)]})
    reported = await eventually(
        lambda: PHASE_FIRST_PRIMARY in database_ready(cp, ns, tenant_name).get("message", "")
        and database_ready(cp, ns, tenant_name), "DatabaseReady shows CloudNativePG's phase")
    assert (reported["status"], reported["reason"]) == ("False", "ClusterNotReady")
    assert "0/3 instances ready" in reported["message"]
    assert "Cluster Is Not Ready" in reported["message"]
    assert migration_jobs(cp, ns, tenant_name) == []

    # Healthy: all instances ready, Ready=True. The managed role is not reported yet.
    instances = [f"{cluster_name}-{i}" for i in (1, 2, 3)]
    patch_cluster_status(cp, ns, cluster_name, {
        "phase": PHASE_HEALTHY, "phaseReason": "", "instances": 3, "readyInstances": 3,
        "instanceNames": instances, "instancesStatus": {"healthy": instances},
        "latestGeneratedNode": 3, "conditions": [ready_condition(True)]})
    reported = await eventually(
        lambda: database_ready(cp, ns, tenant_name).get("reason") == "AppRolePending"
        and database_ready(cp, ns, tenant_name), "DatabaseReady=False, AppRolePending")
    assert reported["status"] == "False"
    assert "tollgate_app" in reported["message"]
    assert migration_jobs(cp, ns, tenant_name) == []

    # The instance manager cannot create the role (e.g. a Secret's wrong username).
    refusal = "wrong username 'someone' in secret, expected 'tollgate_app'"
    patch_cluster_status(cp, ns, cluster_name, {"managedRolesStatus": {
        "byStatus": {"reserved": ["postgres", "streaming_replica"],
                     "pending-reconciliation": ["tollgate_app"]},
        "cannotReconcile": {"tollgate_app": [refusal]}}})
    reported = await eventually(
        lambda: database_ready(cp, ns, tenant_name).get("reason") == "AppRoleFailed"
        and database_ready(cp, ns, tenant_name), "DatabaseReady=False, AppRoleFailed")
    assert refusal in reported["message"]
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert (body or {})["status"]["phase"] == "Degraded"  # a person must act
    await eventually(lambda: ("Warning", "AppRoleFailed") in
                     [(k, r) for k, r, _ in events(cp, ns, tenant_name)], "a Warning event")

    # The role is reconciled: now the migration Job runs, as the owner from `<cluster>-app`.
    patch_cluster_status(cp, ns, cluster_name, {"managedRolesStatus": {
        "byStatus": {"reserved": ["postgres", "streaming_replica"],
                     "reconciled": ["tollgate_app"], "pending-reconciliation": None},
        "cannotReconcile": None,
        "passwordStatus": {"tollgate_app": {
            "transactionID": 745, "resourceVersion": secret["metadata"]["resourceVersion"]}}}})
    jobs = await eventually(lambda: migration_jobs(cp, ns, tenant_name), "a migration Job")
    job_env = env_of(jobs[0]["spec"]["template"]["spec"]["containers"][0])
    assert job_env["TOLLGATE_OWNER_DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {
        "name": f"{cluster_name}-app", "key": "uri"}}
    await eventually(lambda: job_complete(cp, ns, tenant_name), "the migration Job completes")
    reported = await eventually(
        lambda: database_ready(cp, ns, tenant_name).get("status") == "True"
        and database_ready(cp, ns, tenant_name), "DatabaseReady=True")
    assert reported["reason"] == "Migrated"
    assert reported["observedGeneration"] == 1

    # The DSN the operator itself uses: the application role at `<cluster>-rw`.
    async with KubeClient(lambda: login(cp.kubeconfig), FIELD_MANAGER) as kube:
        dsn = await CatalogStores(kube, pool_max=1).resolve(t)
    assert dsn == f"postgresql://tollgate_app:{password}@{cluster_name}-rw.{ns}.svc:5432/tollgate"

    # The operator never rewrote what it owns: the spec it sent is still all there.
    now = get(cp, path)
    assert now is not None and dropped(sent, now) == []
    assert now["metadata"]["generation"] == stored["metadata"]["generation"]


async def test_a_cluster_the_installed_cloudnativepg_refuses_is_reported(
        operator: OperatorThread, control_plane: ControlPlane, ns: str, tenant_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest with a field CloudNativePG's schema lacks (as an older release would)."""
    cp = control_plane
    build = manifests.cnpg_cluster

    def newer(t: TenantWorkload) -> Document:
        cluster = build(t)
        cluster["spec"]["storage"]["sizeInGB"] = 10
        return cluster

    monkeypatch.setattr(manifests, "cnpg_cluster", newer)
    create(cp, tenant_document(tenant_name, ns, database={"mode": "managed"}))
    reported = await eventually(
        lambda: database_ready(cp, ns, tenant_name).get("reason") == "ClusterRejected"
        and database_ready(cp, ns, tenant_name), "DatabaseReady=False, ClusterRejected")
    assert reported["status"] == "False"
    assert f"{ns}/{tenant_name}-db" in reported["message"]
    assert ".spec.storage.sizeInGB: field not declared in schema" in reported["message"]
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert (body or {})["status"]["phase"] == "Degraded"
    assert get(cp, cluster_path(ns, f"{tenant_name}-db")) is None
    assert migration_jobs(cp, ns, tenant_name) == []
    # the workloads are reconciled all the same
    assert get(cp, f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-api")
    await eventually(lambda: ("Warning", "ClusterRejected") in
                     [(k, r) for k, r, _ in events(cp, ns, tenant_name)], "a Warning event")


async def test_deleting_a_tenant_with_deletion_policy_retain_keeps_its_cluster(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    tenant = create(cp, tenant_document(tenant_name, ns, database={"mode": "managed"}))
    path = cluster_path(ns, f"{tenant_name}-db")
    await eventually(lambda: get(cp, path), "the Cluster exists")
    deployment = f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-api"
    assert get(cp, deployment) is not None

    cp.api("DELETE", f"/apis/bss.tollgate.dev/v1alpha1/namespaces/{ns}/tenants/{tenant_name}")
    await eventually(lambda: get_resource(cp, "Tenant", ns, tenant_name) is None,
                     "Tenant gone (finalizer released)")
    await eventually(lambda: get(cp, deployment) is None, "workloads garbage-collected", 60)
    # Nothing refers to the deleted Tenant any more, so no garbage collection can take them.
    uid = tenant["metadata"]["uid"]
    for kept in (path, f"/api/v1/namespaces/{ns}/secrets/{tenant_name}-db-app-role"):
        body = get(cp, kept)
        assert body is not None, kept
        assert all(ref["uid"] != uid for ref in body["metadata"].get("ownerReferences") or ())
    assert ("Normal", "DatabaseRetained") in [(k, r) for k, r, _ in events(cp, ns, tenant_name)]


async def test_a_reconcile_begun_before_the_deletion_does_not_undo_retain(
        control_plane: ControlPlane, cnpg: list[Path]) -> None:
    """The race a child's watch or a timer can run: a Tenant read, then finalized, then
    reconciled from that earlier read. Driven by hand, in a namespace no operator watches."""
    cp = control_plane
    ns = create_namespace(cp, "tgcnpx")
    tenant = create(cp, tenant_document("racy", ns, database={"mode": "managed"}))
    path = cluster_path(ns, "racy-db")
    uid = tenant["metadata"]["uid"]

    def owned() -> bool:
        body = get(cp, path)
        assert body is not None
        return any(ref["uid"] == uid for ref in body["metadata"].get("ownerReferences") or ())

    settings = operator_settings(cp.kubeconfig, (ns,))
    async with KubeClient(lambda: login(cp.kubeconfig), FIELD_MANAGER) as kube:
        stores = CatalogStores(kube, pool_max=1)
        controller = TenantController(settings, kube, stores)
        await controller.reconcile(tenant)
        assert owned()
        events_ = await controller.finalize(tenant)  # deletionPolicy: Retain
        assert [e.reason for e in events_] == ["DatabaseRetained"]
        assert not owned()
        await controller.reconcile(tenant)  # the earlier read, arriving late
        assert not owned()
        await stores.close()


async def test_deleting_a_tenant_with_deletion_policy_delete_collects_its_cluster(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    create(cp, tenant_document(tenant_name, ns,
                               database={"mode": "managed", "deletionPolicy": "Delete"}))
    path = cluster_path(ns, f"{tenant_name}-db")
    await eventually(lambda: get(cp, path), "the Cluster exists")

    cp.api("DELETE", f"/apis/bss.tollgate.dev/v1alpha1/namespaces/{ns}/tenants/{tenant_name}")
    await eventually(lambda: get_resource(cp, "Tenant", ns, tenant_name) is None,
                     "Tenant gone (finalizer released)")
    # The garbage collector follows the ownerReference. It learns of a kind whose CRD came
    # after it started at its next discovery resync (every 30 s), hence the long deadline
    # and this test's place, last.
    await eventually(lambda: get(cp, path) is None, "the Cluster is garbage-collected", 120)
    # The collector deletes the Secret independently of the Cluster (both are the Tenant's).
    secret = f"/api/v1/namespaces/{ns}/secrets/{tenant_name}-db-app-role"
    await eventually(lambda: get(cp, secret) is None, "the app role Secret is collected", 30)
    assert ("Normal", "DatabaseDeleted") in [(k, r) for k, r, _ in events(cp, ns, tenant_name)]
