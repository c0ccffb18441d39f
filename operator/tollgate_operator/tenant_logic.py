"""Tenant reconciliation: converge the children, sync the catalog, report what is true.

Level-based and idempotent: each call server-side applies every child (a no-op when nothing
drifted), reads their real state from the apply responses (Deployment availability, migration
Job completion) and derives the status from it. Calls for one Tenant are serialised.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from tollgate_core import catalog_service
from tollgate_core.resources import TenantSpec
from tollgate_core.resources.common import describe_validation_error
from tollgate_core.resources.tenant import DatabaseMode, DeletionPolicy, LegacyMode
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_operator import manifests
from tollgate_operator.conditions import (
    Condition,
    ConditionType,
    Reason,
    Status,
    find,
    holds,
    merge_conditions,
)
from tollgate_operator.credentials import ensure_secret
from tollgate_operator.databases import DATABASE_OUTAGES, CatalogStores, TenantNotReady
from tollgate_operator.kube import KubeClient, KubeError, Manifest
from tollgate_operator.manifests import Component, Owner, TenantWorkload
from tollgate_operator.outcome import Event, Outcome
from tollgate_operator.settings import Settings

# Reasons that need a person (or another operator) to act, as opposed to "still starting".
FAILURES = frozenset({Reason.INVALID_SPEC, Reason.CNPG_NOT_INSTALLED, Reason.SECRET_NOT_FOUND,
                      Reason.SECRET_KEY_MISSING, Reason.MIGRATION_FAILED,
                      Reason.DATABASE_UNREACHABLE, Reason.CLUSTER_REJECTED,
                      Reason.APP_ROLE_FAILED, Reason.LEGACY_SYNC_FAILED})
READINESS = (ConditionType.DATABASE_READY, ConditionType.CHARGING_READY,
             ConditionType.BILLING_READY, ConditionType.API_READY, ConditionType.CATALOG_SYNCED)
"""What Ready waits for. Not LegacySynced: a sync runs on its schedule (a new Tenant would wait
a day), and a failed one needs a person but stops no charging; it warns instead."""


class Phase:
    """Values of `status.phase` (the CRD's enum)."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    DELETING = "Deleting"


def workload_condition(deployment: Mapping[str, Any], component: Component) -> Condition:
    """ChargingReady/BillingReady/ApiReady from the Deployment's own `Available` condition."""
    meta = deployment.get("metadata") or {}
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    kind, name = component.condition, meta.get("name", component.value)
    if spec.get("replicas") == 0:
        return Condition(kind, Status.TRUE, Reason.SCALED_TO_ZERO,
                         f"Deployment {name} is scaled to zero")
    current = status.get("observedGeneration", 0) >= meta.get("generation", 0)
    available = find(status.get("conditions"), "Available")
    counts = f"{status.get('availableReplicas', 0)}/{spec.get('replicas', 1)} replicas available"
    if current and available is not None and available.get("status") == "True":
        return Condition(kind, Status.TRUE, Reason.AVAILABLE, f"Deployment {name}: {counts}")
    detail = (available or {}).get("message") or "waiting for the Deployment controller"
    return Condition(kind, Status.FALSE, Reason.UNAVAILABLE,
                     f"Deployment {name}: {counts}; {detail}")


def migration_condition(job: Mapping[str, Any]) -> Condition:
    """DatabaseReady as far as the schema goes: the migration Job's Complete/Failed."""
    name = (job.get("metadata") or {}).get("name", "migration")
    conditions = (job.get("status") or {}).get("conditions")
    failed = find(conditions, "Failed")
    if failed is not None and failed.get("status") == "True":
        return Condition(ConditionType.DATABASE_READY, Status.FALSE, Reason.MIGRATION_FAILED,
                         f"Job {name} failed: {failed.get('message') or failed.get('reason')}")
    complete = find(conditions, "Complete")
    if complete is not None and complete.get("status") == "True":
        return Condition(ConditionType.DATABASE_READY, Status.TRUE, Reason.MIGRATED,
                         f"schema migrated by Job {name}")
    return Condition(ConditionType.DATABASE_READY, Status.FALSE, Reason.MIGRATION_RUNNING,
                     f"waiting for Job {name} to migrate the schema")


def _is_true(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def legacy_condition(jobs: Sequence[Mapping[str, Any]], t: TenantWorkload) -> Condition:
    """LegacySynced from the Jobs of the legacy sync CronJob: the last finished one decides
    (a run in progress does not hide how the previous one ended)."""
    cronjob, legacy = manifests.legacy_cronjob_name(t), t.spec.legacy

    def created(job: Mapping[str, Any]) -> str:
        return str((job.get("metadata") or {}).get("creationTimestamp") or "")

    finished = [j for j in jobs if _is_true((j.get("status") or {}).get("conditions"),
                                            "Complete")
                or _is_true((j.get("status") or {}).get("conditions"), "Failed")]
    if finished:
        job = max(finished, key=created)
        name, status = job["metadata"]["name"], job.get("status") or {}
        if _is_true(status.get("conditions"), "Complete"):
            return Condition(ConditionType.LEGACY_SYNCED, Status.TRUE, Reason.SYNCED,
                             f"Job {name} of CronJob {cronjob} completed at "
                             f"{status.get('completionTime', '?')}")
        failed = find(status.get("conditions"), "Failed") or {}
        return Condition(ConditionType.LEGACY_SYNCED, Status.FALSE, Reason.LEGACY_SYNC_FAILED,
                         f"Job {name} of CronJob {cronjob} failed: "
                         f"{failed.get('message') or failed.get('reason')} (exit code "
                         f"{manifests.LEGACY_EXTRACT_REFUSED}: an extract was refused, see "
                         f"inbox/failed/ and reports/ on PersistentVolumeClaim "
                         f"{legacy.extracts_claim}; otherwise the Job's log says why)")
    running = [j for j in jobs if (j.get("status") or {}).get("active")]
    if running:
        return Condition(ConditionType.LEGACY_SYNCED, Status.UNKNOWN, Reason.LEGACY_SYNC_RUNNING,
                         f"Job {max(running, key=created)['metadata']['name']} of CronJob "
                         f"{cronjob} is running")
    return Condition(ConditionType.LEGACY_SYNCED, Status.UNKNOWN, Reason.LEGACY_SYNC_SCHEDULED,
                     f"CronJob {cronjob} has not run yet (schedule '{legacy.schedule}', "
                     f"{t.spec.timezone})")


def ready_condition(observed: Sequence[Condition]) -> Condition:
    failing = [c for c in observed if c.type in READINESS and not c.is_true]
    if not failing:
        return Condition(ConditionType.READY, Status.TRUE, Reason.RECONCILED,
                         "workloads available, database migrated, catalog synced")
    message = "; ".join(f"{c.type}: {c.message}" for c in failing)
    return Condition(ConditionType.READY, Status.FALSE, failing[0].reason, message)


def phase_of(observed: Sequence[Condition], previous: str | None) -> str:
    ready = next((c for c in observed if c.type is ConditionType.READY), None)
    if ready is not None and ready.is_true:
        return Phase.READY
    if any(c.reason in FAILURES for c in observed if not c.is_true):
        return Phase.DEGRADED
    if previous in (Phase.READY, Phase.DEGRADED):
        return Phase.DEGRADED  # it was up, and now something is not
    return Phase.PROVISIONING


def transition_events(previous: Sequence[Mapping[str, Any]] | None,
                      observed: Sequence[Condition]) -> list[Event]:
    """Events for conditions that changed: failures as warnings, becoming Ready as normal."""
    events = []
    for condition in observed:
        before = find(previous, condition.type)
        unchanged = before is not None and (before.get("status"), before.get("reason")) == (
            condition.status, condition.reason)
        if unchanged:
            continue
        if not condition.is_true and condition.reason in FAILURES:
            events.append(Event(True, condition.reason, condition.message))
        elif condition.type is ConditionType.READY and condition.is_true:
            events.append(Event(False, "Ready", condition.message))
    return events


async def latest_revision(pool: Pool, tenant: str) -> int | None:
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        latest = await catalog_repo.latest_revision(conn, tenant)
    return None if latest is None else latest.revision


class TenantController:
    """Reconciles Tenants; one lock per Tenant so handlers, timers and watches never overlap."""

    def __init__(self, settings: Settings, kube: KubeClient, stores: CatalogStores) -> None:
        self._settings = settings
        self._kube = kube
        self._stores = stores
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._finalizing: set[str] = set()
        """UIDs of Tenants whose finalizer ran: a deletion is never undone."""

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return Outcome()  # the finalizer's business; never re-create children now
        async with self._locks[(meta["namespace"], meta["name"])]:
            if meta.get("uid") in self._finalizing:
                # `body` was read before the deletion (a child's watch, a timer): applying it
                # now would give back the ownerReferences the finalizer just released.
                return Outcome()
            return await self._reconcile(body)

    async def _reconcile(self, body: Mapping[str, Any]) -> Outcome:
        meta = body["metadata"]
        generation = int(meta.get("generation", 1))
        previous: Mapping[str, Any] = body.get("status") or {}
        problems = []
        if (name_error := manifests.tenant_name_error(meta["name"])) is not None:
            problems.append(name_error)
        try:
            spec = TenantSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            problems += describe_validation_error(exc)
        if problems:
            return self._invalid(previous, generation, problems)

        t = TenantWorkload(Owner.of(body), meta["namespace"], spec, self._settings.image)
        applied, rejected = await self._apply_children(t)
        observed: list[Condition] = []
        database, dsn = await self._database(t, rejected)
        observed.append(database)
        catalog, revision, outage = await self._catalog(t, dsn, previous, generation)
        observed.append(catalog)
        for component in Component:
            deployment = applied[("Deployment", manifests.workload_name(t, component))]
            observed.append(workload_condition(deployment, component))
        observed.append(ready_condition(observed))
        legacy = await self._legacy(t, previous, generation)
        if legacy is not None:
            observed.append(legacy)
        conditions = merge_conditions(previous.get("conditions"), observed, generation)
        if legacy is None:  # legacy.mode none: no such condition
            conditions = [c for c in conditions
                          if c.get("type") != ConditionType.LEGACY_SYNCED]

        status: dict[str, Any] = {
            "phase": phase_of(observed, previous.get("phase")),
            "conditions": conditions,
            "observedGeneration": generation,
            "endpoints": {"graphql": manifests.graphql_endpoint(t)},
        }
        if revision is not None:
            status["catalogRevision"] = revision
        outcome = Outcome(status, transition_events(previous.get("conditions"), observed))
        if outage:
            outcome.retry_after_s = self._settings.tenant_wait_s
            outcome.retry_message = catalog.message
        return outcome

    def _invalid(self, previous: Mapping[str, Any], generation: int,
                 problems: list[str]) -> Outcome:
        """A spec the operator cannot act on: permanent until the next generation."""
        message = "; ".join(problems)
        observed = [Condition(ConditionType.READY, Status.FALSE, Reason.INVALID_SPEC, message)]
        status = {"phase": Phase.DEGRADED, "observedGeneration": generation,
                  "conditions": merge_conditions(previous.get("conditions"), observed,
                                                 generation)}
        return Outcome(status, transition_events(previous.get("conditions"), observed))

    async def _apply_children(self, t: TenantWorkload
                              ) -> tuple[dict[tuple[str, str], Manifest], str | None]:
        """Server-side apply every child but the migration Job (see :meth:`_database`).

        Returns the server's view of each, by (kind, name), and why the API server refused the
        CloudNativePG Cluster, if it did.
        """
        for generated in manifests.generated_secrets(t):
            await ensure_secret(self._kube, t.owner, t.namespace, t.name, "credentials",
                                generated)
        children = [m for m in manifests.tenant_children(t) if m["kind"] != "Job"]
        # Identity and configuration first, so Pods never start without them.
        first = [m for m in children if m["kind"] in ("ServiceAccount", "ConfigMap")]
        rest = [m for m in children if m not in first]
        managed = t.spec.database.mode is DatabaseMode.MANAGED and await self._kube.serves(
            manifests.CNPG_API_VERSION)
        results = await asyncio.gather(*(self._kube.apply(m) for m in first))
        results += await asyncio.gather(*(self._kube.apply(m) for m in rest))
        applied = {(m["kind"], m["metadata"]["name"]): result
                   for m, result in zip([*first, *rest], results, strict=True)}
        return applied, (await self._apply_cluster(t) if managed else None)

    async def _legacy(self, t: TenantWorkload, previous: Mapping[str, Any],
                      generation: int) -> Condition | None:
        """LegacySynced while `legacy.mode` is mirror or reconcile (the CronJob is applied with
        the other children); with none, the CronJob is deleted (its Jobs by cascade) when the
        spec changed or a LegacySynced condition says it may still be there."""
        if t.spec.legacy.mode is LegacyMode.NONE:
            stale = find(previous.get("conditions"), ConditionType.LEGACY_SYNCED) is not None
            if stale or previous.get("observedGeneration") != generation:
                await self._kube.delete("batch/v1", "CronJob", t.namespace,
                                        manifests.legacy_cronjob_name(t))
            return None
        selector = ",".join(f"{k}={v}" for k, v in manifests.selector_labels(
            t.name, manifests.LEGACY).items())
        return legacy_condition(await self._kube.list("batch/v1", "Job", t.namespace, selector),
                                t)

    async def _apply_cluster(self, t: TenantWorkload) -> str | None:
        """Apply the CloudNativePG Cluster, whose schema is CloudNativePG's, not ours.

        Returns the API server's reason when it refuses the Cluster for good (a field the
        installed CloudNativePG does not know, RBAC, its admission webhook); outages and
        conflicts raise for a retry.
        """
        try:
            await self._kube.apply(manifests.cnpg_cluster(t))
        except KubeError as exc:
            if exc.retryable:
                raise
            return (f"the API server refused CloudNativePG Cluster {t.namespace}/"
                    f"{manifests.cnpg_cluster_name(t)} (HTTP {exc.status}): {exc.message}")
        return None

    async def _database(self, t: TenantWorkload, rejected: str | None
                        ) -> tuple[Condition, str | None]:
        """DatabaseReady, and the DSN when the database is usable.

        The migration Job is applied only once the database resolves: a Job started before a
        CloudNativePG Cluster is up would spend its retries on a database that is not there
        and stay Failed (Job templates are immutable, so its name would not change).
        """
        if rejected is not None:
            return Condition(ConditionType.DATABASE_READY, Status.FALSE,
                             Reason.CLUSTER_REJECTED, rejected), None
        try:
            dsn = await self._stores.resolve(t)
        except TenantNotReady as exc:
            return Condition(ConditionType.DATABASE_READY, Status.FALSE, exc.reason,
                             exc.message), None
        migration = migration_condition(await self._kube.apply(manifests.migration_job(t)))
        if not migration.is_true:
            return migration, None
        await self._prune_migrations(t)
        return migration, dsn

    async def _prune_migrations(self, t: TenantWorkload) -> None:
        """Delete the migration Jobs of earlier images once the current one has completed."""
        current = manifests.migration_job_name(t)
        selector = ",".join(f"{k}={v}" for k, v in manifests.selector_labels(
            t.name, manifests.MIGRATION).items())
        for job in await self._kube.list("batch/v1", "Job", t.namespace, selector):
            meta = job["metadata"]
            owned = any(r.get("uid") == t.owner.uid for r in meta.get("ownerReferences") or ())
            if owned and meta["name"] != current:
                await self._kube.delete("batch/v1", "Job", t.namespace, meta["name"])

    async def _catalog(self, t: TenantWorkload, dsn: str | None, previous: Mapping[str, Any],
                       generation: int) -> tuple[Condition, int | None, bool]:
        """CatalogSynced, the latest catalog revision, and whether the database was down."""
        known = previous.get("catalogRevision")
        if dsn is None:
            return Condition(ConditionType.CATALOG_SYNCED, Status.FALSE,
                             Reason.DATABASE_NOT_READY, "waiting for DatabaseReady"), known, False
        try:
            pool = await self._stores.pool(dsn)
            if not holds(previous.get("conditions"), ConditionType.CATALOG_SYNCED, generation):
                await catalog_service.apply_tenant(pool, t.name, t.spec)
            revision = await latest_revision(pool, t.name)
        except DATABASE_OUTAGES as exc:
            return Condition(ConditionType.CATALOG_SYNCED, Status.FALSE,
                             Reason.DATABASE_UNREACHABLE,
                             f"{type(exc).__name__}: {exc}"), known, True
        published = (f"catalog revision {revision} in force" if revision is not None
                     else "no catalog revision published yet")
        return Condition(ConditionType.CATALOG_SYNCED, Status.TRUE, Reason.SYNCED,
                         f"tenant stored in its database; {published}"), revision, False

    async def finalize(self, body: Mapping[str, Any]) -> list[Event]:
        """Before the Tenant goes: stop the legacy sync, and keep or drop its data per
        spec.database.deletionPolicy.

        The other workloads stop by garbage collection once the finalizer is released.
        """
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        # After any reconcile in flight, and before any that read the Tenant earlier.
        async with self._locks[(namespace, name)]:
            self._finalizing.add(str(meta["uid"]))
        self._stores.forget(namespace, name)
        try:
            spec = TenantSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            return []  # nothing was ever created from it
        t = TenantWorkload(Owner.of(body), namespace, spec, self._settings.image)
        # No sync may start for a tenant on its way out, however long the garbage collector
        # takes to reach the CronJob (its Jobs follow by cascade).
        await self._kube.delete("batch/v1", "CronJob", namespace,
                                manifests.legacy_cronjob_name(t))
        policy = spec.database.deletion_policy
        if spec.database.mode is DatabaseMode.MANAGED:
            if policy is DeletionPolicy.DELETE:
                return [Event(False, "DatabaseDeleted", "CloudNativePG Cluster "
                              f"{manifests.cnpg_cluster_name(t)} is deleted with the Tenant "
                              "(deletionPolicy: Delete)")]
            kept = await self._orphan(t)
            return [Event(False, "DatabaseRetained", f"kept {', '.join(kept) or 'no database'} "
                          "(deletionPolicy: Retain); workloads stop")]
        if policy is DeletionPolicy.DELETE:
            return [Event(True, "DatabaseRetained", "deletionPolicy: Delete, but the operator "
                          "does not erase rows in an external database; the tenant's data is "
                          "kept")]
        return [Event(False, "DatabaseRetained", "the tenant's data stays in its external "
                      "database (deletionPolicy: Retain); workloads stop")]

    async def _orphan(self, t: TenantWorkload) -> list[str]:
        """Drop our ownerReference from the database objects so garbage collection keeps them."""
        kept = []
        candidates = [(manifests.CNPG_API_VERSION, "Cluster", manifests.cnpg_cluster_name(t)),
                      ("v1", "Secret", manifests.app_role_secret_name(t))]
        for api_version, kind, name in candidates:
            if kind == "Cluster" and not await self._kube.serves(api_version):
                continue
            current = await self._kube.get(api_version, kind, t.namespace, name)
            if current is None:
                continue
            refs = current["metadata"].get("ownerReferences") or []
            others = [r for r in refs if r.get("uid") != t.owner.uid]
            if len(others) != len(refs):
                await self._kube.merge_patch(api_version, kind, t.namespace, name,
                                             {"metadata": {"ownerReferences": others}})
            kept.append(f"{kind} {name}")
        return kept
