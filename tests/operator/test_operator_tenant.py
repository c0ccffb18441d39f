"""Tenants against a real kube-apiserver and PostgreSQL: children, conditions, drift, deletion."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Servers
from tests.harness.controlplane import ControlPlane
from tests.operator.operator_fixtures import (
    OperatorThread,
    await_tenant_ready,
    condition,
    create,
    database_namespace,
    events,
    eventually,
    get,
    get_resource,
    operator_settings,
    patch,
    tenant_document,
)
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx

PREFIX = "tgten"


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorThread]:
    settings = operator_settings(control_plane.kubeconfig, (f"{PREFIX}-*",))
    with OperatorThread(settings) as running:
        yield running


def children(tenant: str, namespace: str) -> list[str]:
    """API paths of every child the operator creates for a Tenant (the Job by label)."""
    core, apps = f"/api/v1/namespaces/{namespace}", f"/apis/apps/v1/namespaces/{namespace}"
    policy = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
    netpol = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    paths = [f"{core}/serviceaccounts/{tenant}-tollgate", f"{core}/configmaps/{tenant}-config",
             f"{core}/secrets/{tenant}-credentials"]
    paths += [f"{netpol}/{tenant}-{n}" for n in ("default-deny", "allow-egress",
                                                  "allow-api-ingress", "allow-metrics")]
    for component in ("charging", "billing", "api"):
        paths += [f"{apps}/deployments/{tenant}-{component}",
                  f"{core}/services/{tenant}-{component}", f"{policy}/{tenant}-{component}"]
    return paths


def migration_jobs(cp: ControlPlane, tenant: str, namespace: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance%3D{tenant},app.kubernetes.io/component%3Dmigration"
    jobs: list[dict[str, Any]] = cp.api(
        "GET", f"/apis/batch/v1/namespaces/{namespace}/jobs?labelSelector={selector}")["items"]
    return jobs



@pytest.fixture
def ns(control_plane: ControlPlane, servers: Servers) -> str:
    return database_namespace(control_plane, PREFIX, servers.app_dsn, servers.owner_dsn)


async def test_tenant_gets_all_children_then_becomes_ready_when_deployments_are_available(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str, pool: Pool) -> None:
    cp = control_plane
    started = time.monotonic()
    tenant = create(cp, tenant_document(tenant_name, ns))
    paths = children(tenant_name, ns)
    await eventually(lambda: all(get(cp, p) for p in paths)
                     and migration_jobs(cp, tenant_name, ns), "all children exist")
    created_s = time.monotonic() - started
    print(f"\n[timing] Tenant -> all {len(paths) + 1} children created in {created_s:.2f}s")
    assert created_s <= 5.0  # DESIGN.md performance goal

    await await_tenant_ready(cp, ns, tenant_name, generation=1)
    print(f"[timing] Tenant -> Ready in {time.monotonic() - started:.2f}s")
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert body is not None
    status = body["status"]
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == 1
    assert status["endpoints"] == {
        "graphql": f"http://{tenant_name}-api.{ns}.svc/graphql"}
    assert condition(body, "ChargingReady")["reason"] == "Available"
    assert condition(body, "DatabaseReady")["reason"] == "Migrated"
    # the Deployments really are Available (kwok runs the Pods)
    for component in ("charging", "billing", "api"):
        deployment = get(cp, f"/apis/apps/v1/namespaces/{ns}/deployments/"
                             f"{tenant_name}-{component}")
        assert deployment is not None
        assert condition(deployment, "Available")["status"] == "True"
        owner = deployment["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "Tenant", tenant["metadata"]["uid"], True)
    # the catalog store knows the tenant
    async with tenant_tx(pool, tenant_name) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant_name)
    assert spec is not None and spec.currency == "EUR"
    # Kopf's bookkeeping stays out of the public status
    assert "kopf" not in status


async def test_spec_change_rolls_out_and_is_observed(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str, pool: Pool) -> None:
    cp = control_plane
    create(cp, tenant_document(tenant_name, ns))
    await await_tenant_ready(cp, ns, tenant_name, generation=1)

    patch(cp, "Tenant", ns, tenant_name,
          {"spec": {"charging": {"replicas": 2}, "billing": {"cycleDay": 5}}})
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-charging"
    await eventually(lambda: (get(cp, path) or {}).get("spec", {}).get("replicas") == 2,
                     "charging scaled to 2")
    await await_tenant_ready(cp, ns, tenant_name, generation=2)
    async with tenant_tx(pool, tenant_name) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant_name)
    assert spec is not None and spec.billing.cycle_day == 5


async def test_a_deleted_deployment_comes_back(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    create(cp, tenant_document(tenant_name, ns))
    await await_tenant_ready(cp, ns, tenant_name, generation=1)
    path = f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-charging"
    before = get(cp, path)
    assert before is not None

    started = time.monotonic()
    cp.api("DELETE", path)

    def recreated() -> bool:
        now = get(cp, path)
        return now is not None and now["metadata"]["uid"] != before["metadata"]["uid"]

    await eventually(recreated, "charging Deployment re-created", 30)
    print(f"\n[timing] deleted Deployment re-created in {time.monotonic() - started:.2f}s")
    await await_tenant_ready(cp, ns, tenant_name, generation=1)


async def test_managed_database_without_cloudnativepg_says_so(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    create(cp, tenant_document(tenant_name, ns, database={"mode": "managed"}))

    def degraded() -> bool:
        body = get_resource(cp, "Tenant", ns, tenant_name)
        return bool((body or {}).get("status", {}).get("phase") == "Degraded")

    await eventually(degraded, "Tenant Degraded", 30)
    body = get_resource(cp, "Tenant", ns, tenant_name)
    database = condition(body, "DatabaseReady")
    assert (database["status"], database["reason"]) == ("False", "CNPGNotInstalled")
    assert "CloudNativePG is not installed" in database["message"]
    assert "database.mode: external" in database["message"]
    assert condition(body, "Ready")["reason"] == "CNPGNotInstalled"
    assert condition(body, "CatalogSynced")["reason"] == "DatabaseNotReady"
    # the workloads exist anyway, with the generated database password Secret they will use
    assert get(cp, f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-api")
    assert get(cp, f"/api/v1/namespaces/{ns}/secrets/{tenant_name}-db-app-role")
    await eventually(lambda: ("Warning", "CNPGNotInstalled") in
                     [(t, r) for t, r, _ in events(cp, ns, tenant_name)],
                     "a Warning event")


async def test_deleting_a_tenant_stops_its_workloads_and_retains_its_data(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str, pool: Pool) -> None:
    cp = control_plane
    create(cp, tenant_document(tenant_name, ns))
    await await_tenant_ready(cp, ns, tenant_name, generation=1)
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert body is not None and "bss.tollgate.dev/finalizer" in body["metadata"]["finalizers"]

    started = time.monotonic()
    cp.api("DELETE", f"/apis/bss.tollgate.dev/v1alpha1/namespaces/{ns}/tenants/"
                     f"{tenant_name}")
    await eventually(lambda: get_resource(cp, "Tenant", ns, tenant_name) is None,
                     "Tenant gone (finalizer released)", 30)
    paths = children(tenant_name, ns)
    await eventually(lambda: not any(get(cp, p) for p in paths)
                     and not migration_jobs(cp, tenant_name, ns),
                     "children garbage-collected", 60)
    print(f"\n[timing] Tenant deleted -> children collected in {time.monotonic() - started:.2f}s")
    assert ("Normal", "DatabaseRetained") in [
        (t, r) for t, r, _ in events(cp, ns, tenant_name)]
    async with tenant_tx(pool, tenant_name) as conn:  # deletionPolicy Retain
        assert await catalog_repo.get_tenant(conn, tenant_name) is not None


async def test_a_tenant_spec_the_models_refuse_is_reported_not_retried(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    # The CRD cannot know IANA timezones; the model can.
    create(cp, tenant_document(tenant_name, ns, timezone="Mars/Olympus_Mons"))

    def refused() -> dict[str, object] | None:
        body = get_resource(cp, "Tenant", ns, tenant_name)
        return condition(body, "Ready") or None

    ready_condition = await eventually(refused, "Ready condition")
    assert (ready_condition["status"], ready_condition["reason"]) == ("False", "InvalidSpec")
    assert "spec.timezone" in str(ready_condition["message"])
    body = get_resource(cp, "Tenant", ns, tenant_name)
    assert body is not None and body["status"]["phase"] == "Degraded"
    assert get(cp, f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-api") is None
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in events(cp, ns, tenant_name)]


async def test_migration_jobs_of_earlier_images_are_pruned(
        operator: OperatorThread, control_plane: ControlPlane, ns: str,
        tenant_name: str) -> None:
    cp = control_plane
    tenant = create(cp, tenant_document(tenant_name, ns))
    await await_tenant_ready(cp, ns, tenant_name, generation=1)
    current = [j["metadata"]["name"] for j in migration_jobs(cp, tenant_name, ns)]
    stale = f"{tenant_name}-migrate-00000000"
    labels = {"app.kubernetes.io/name": "tollgate", "app.kubernetes.io/instance": tenant_name,
              "app.kubernetes.io/component": "migration"}
    cp.api("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": stale, "labels": labels, "ownerReferences": [{
            "apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant", "name": tenant_name,
            "uid": tenant["metadata"]["uid"]}]},
        "spec": {"template": {"metadata": {"labels": labels}, "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "migrate", "image": "example.invalid/tollgate:old"}]}}}})

    def names() -> list[str]:
        return [str(j["metadata"]["name"]) for j in migration_jobs(cp, tenant_name, ns)]

    await eventually(lambda: names() == current, "stale migration Job deleted", 30)
