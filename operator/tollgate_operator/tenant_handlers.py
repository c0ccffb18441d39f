"""Kopf registrations for Tenants: thin glue from events to :mod:`tenant_logic`.

Three paths lead to the same idempotent reconcile: change handlers (create, update, resume),
a resync timer (drift of any child), and a watch of the Tenants' Deployments, Jobs and
CloudNativePG Clusters (availability, completion, database readiness and deletion, handled
within a second). Kopf watches Clusters only while their CRD is installed; without it, Kopf
warns (at start, and when CRDs change) that `clusters` is unresolved, and a managed Tenant
says `CNPGNotInstalled`.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import kopf

from tollgate_core.resources import API_GROUP, API_VERSION
from tollgate_operator import manifests
from tollgate_operator.conditions import status_changes
from tollgate_operator.databases import DATABASE_OUTAGES
from tollgate_operator.debounce import Debouncer
from tollgate_operator.kube import KubeError
from tollgate_operator.outcome import Outcome
from tollgate_operator.runtime import Runtime
from tollgate_operator.settings import FIELD_MANAGER, Settings
from tollgate_operator.writing import apply_outcome, post_events

TENANTS = (API_GROUP, API_VERSION, "tenants")
CHILDREN = (("apps", "v1", "deployments"), ("batch", "v1", "jobs"),
            ("postgresql.cnpg.io", "v1", "clusters"))
CHILD_LABELS = {"app.kubernetes.io/managed-by": FIELD_MANAGER,
                "app.kubernetes.io/name": manifests.APP_NAME}
TENANT_API_VERSION = f"{API_GROUP}/{API_VERSION}"


def owner_tenant(body: kopf.Body) -> str | None:
    """Name of the Tenant that controls a child object, if any: its owner, or for a Job of the
    legacy sync CronJob (owned by the CronJob), the tenant label the Job template carries."""
    metadata = body.get("metadata", {})
    for ref in metadata.get("ownerReferences") or ():
        if ref.get("kind") == "Tenant" and ref.get("apiVersion") == TENANT_API_VERSION:
            return str(ref["name"])
        if ref.get("kind") == "CronJob":
            tenant = (metadata.get("labels") or {}).get(manifests.TENANT_LABEL)
            return str(tenant) if tenant else None
    return None


def register(registry: kopf.OperatorRegistry, settings: Settings, runtime: Runtime) -> None:
    controller, kube, metrics = runtime.tenants, runtime.kube, runtime.metrics

    @kopf.on.resume(*TENANTS, id="reconcile", registry=registry)
    @kopf.on.create(*TENANTS, id="reconcile", registry=registry)
    @kopf.on.update(*TENANTS, id="reconcile", registry=registry)
    async def reconcile_tenant(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        apply_outcome(patch, body, await metrics.track("Tenant", controller.reconcile(body)))

    @kopf.timer(*TENANTS, id="resync", interval=settings.resync_interval_s,
                initial_delay=settings.resync_interval_s, registry=registry)
    async def resync_tenant(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome = await metrics.track("Tenant", controller.reconcile(body))
        apply_outcome(patch, body, outcome, retry=False)

    @kopf.on.delete(*TENANTS, id="finalize", registry=registry)
    async def finalize_tenant(body: kopf.Body, **_: Any) -> None:
        post_events(body, Outcome(events=await controller.finalize(body)))

    async def resync_from_child(key: tuple[str, str]) -> None:
        namespace, name = key
        body = await kube.get(TENANT_API_VERSION, "Tenant", namespace, name)
        if body is None:
            return
        outcome = await metrics.track("Tenant", controller.reconcile(body))
        changes = status_changes(body.get("status"), outcome.status)
        if changes:
            await kube.merge_patch(TENANT_API_VERSION, "Tenant", namespace, name,
                                   {"status": changes}, subresource="status")
        post_events(body, outcome)

    debouncer: Debouncer[tuple[str, str]] = Debouncer(
        resync_from_child,
        failures=(KubeError, aiohttp.ClientError, *DATABASE_OUTAGES))

    async def child_changed(body: kopf.Body, **_: Any) -> None:
        tenant = owner_tenant(body)
        namespace = body.get("metadata", {}).get("namespace")
        if tenant is not None and namespace:
            debouncer.poke((str(namespace), tenant))

    for group, version, plural in CHILDREN:
        kopf.on.event(group, version, plural, labels=CHILD_LABELS, id=f"watch_{plural}",
                      registry=registry)(child_changed)

    @kopf.on.cleanup(id="stop_child_watch", registry=registry)
    async def stop_child_watch(**_: Any) -> None:
        await debouncer.close()
