"""Where each Tenant's catalog lives: its database, found from the Tenant's spec.

A tenant's catalog revisions are stored in the tenant's own database (the one its charging and
billing engines read), so the operator resolves that database the same way the workloads do:
`database.mode: external` reads the DSN from the Secret `database.secretRef` (key `dsn`);
`managed` uses the CloudNativePG Cluster the operator created, once CloudNativePG reports it
Ready and the application role reconciled (its status fields, as in CloudNativePG's CRD).
Pools are kept per DSN.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import ValidationError

from tollgate_core.resources import API_GROUP, API_VERSION, TenantSpec
from tollgate_core.resources.tenant import DatabaseMode
from tollgate_core.store.db import Pool, create_pool
from tollgate_operator import manifests
from tollgate_operator.conditions import Reason, find
from tollgate_operator.kube import KubeClient
from tollgate_operator.manifests import TenantWorkload

DATABASE_OUTAGES: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""Failures of a database call that a later attempt may not meet (outage, failover, a schema
whose migration has not run yet): temporary, retried with a delay."""


class TenantNotReady(Exception):
    """The Tenant or its database cannot be used yet; `reason` says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class _Resolved:
    dsn: str
    at: float


def _secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    data = secret.get("data") or {}
    value = data.get(key)
    return None if value is None else base64.b64decode(value).decode()


def cluster_progress(cluster: Mapping[str, Any]) -> str:
    """What CloudNativePG says of a Cluster that is not Ready: phase, instances, condition."""
    spec, status = cluster.get("spec") or {}, cluster.get("status") or {}
    if not status:
        return "CloudNativePG has not reported on it yet (no status): is its operator running?"
    parts = [str(status.get("phase") or "no phase")]
    if status.get("phaseReason"):
        parts[0] += f" ({status['phaseReason']})"
    parts.append(f"{status.get('readyInstances') or 0}/{spec.get('instances', '?')} "
                 "instances ready")
    ready = find(status.get("conditions"), "Ready")
    if ready is not None and ready.get("message"):
        parts.append(f"Ready={ready.get('status')}: {ready['message']}")
    return "; ".join(parts)


class CatalogStores:
    """DSN resolution (cached briefly) and one connection pool per DSN."""

    def __init__(self, kube: KubeClient, pool_max: int, cache_s: float = 30.0) -> None:
        self._kube = kube
        self._pool_max = pool_max
        self._cache_s = cache_s
        self._resolved: dict[tuple[str, str], _Resolved] = {}
        self._pools: dict[str, Pool] = {}
        self._lock = asyncio.Lock()

    async def resolve(self, t: TenantWorkload) -> str:
        """The application-role DSN of the tenant's database; raises :class:`TenantNotReady`."""
        if t.spec.database.mode is DatabaseMode.EXTERNAL:
            dsn = await self._external(t)
        else:
            dsn = await self._managed(t)
        self._resolved[(t.namespace, t.name)] = _Resolved(dsn, time.monotonic())
        return dsn

    async def _external(self, t: TenantWorkload) -> str:
        name = t.spec.database.secret_ref
        secret = await self._kube.get("v1", "Secret", t.namespace, str(name))
        if secret is None:
            raise TenantNotReady(Reason.SECRET_NOT_FOUND,
                                 f"Secret {t.namespace}/{name} (spec.database.secretRef) "
                                 "does not exist")
        dsn = _secret_value(secret, manifests.DSN_KEY)
        if not dsn:
            raise TenantNotReady(Reason.SECRET_KEY_MISSING,
                                 f"Secret {t.namespace}/{name} has no key "
                                 f"'{manifests.DSN_KEY}' (the application role's DSN)")
        return dsn

    async def _managed(self, t: TenantWorkload) -> str:
        if not await self._kube.serves(manifests.CNPG_API_VERSION):
            raise TenantNotReady(
                Reason.CNPG_NOT_INSTALLED,
                "spec.database.mode is 'managed' but CloudNativePG is not installed (the API "
                f"{manifests.CNPG_API_VERSION} is not served): install the CloudNativePG "
                "operator, or set spec.database.mode: external with a secretRef")
        name = manifests.cnpg_cluster_name(t)
        cluster = await self._kube.get(manifests.CNPG_API_VERSION, "Cluster", t.namespace, name)
        if cluster is None:
            raise TenantNotReady(Reason.CLUSTER_NOT_READY,
                                 f"CloudNativePG Cluster {t.namespace}/{name} does not exist yet")
        status = cluster.get("status") or {}
        # CloudNativePG sets Ready=True (reason ClusterIsReady) exactly in the phase
        # "Cluster in healthy state"; any other phase is Ready=False.
        ready = find(status.get("conditions"), "Ready")
        if ready is None or ready.get("status") != "True":
            raise TenantNotReady(Reason.CLUSTER_NOT_READY,
                                 f"CloudNativePG Cluster {t.namespace}/{name} is not ready: "
                                 f"{cluster_progress(cluster)}")
        # Managed roles are created by the primary's instance manager after bootstrap, and
        # reported apart from readiness: the workloads' role must exist before they log in.
        roles = status.get("managedRolesStatus") or {}
        refused = (roles.get("cannotReconcile") or {}).get(manifests.APP_ROLE)
        if refused:
            raise TenantNotReady(Reason.APP_ROLE_FAILED,
                                 f"CloudNativePG cannot reconcile role {manifests.APP_ROLE} of "
                                 f"Cluster {t.namespace}/{name}: {'; '.join(map(str, refused))}")
        if manifests.APP_ROLE not in ((roles.get("byStatus") or {}).get("reconciled") or ()):
            raise TenantNotReady(Reason.APP_ROLE_PENDING,
                                 f"CloudNativePG Cluster {t.namespace}/{name} is ready; waiting "
                                 f"for it to reconcile role {manifests.APP_ROLE} "
                                 "(status.managedRolesStatus)")
        role = await self._kube.get("v1", "Secret", t.namespace,
                                    manifests.app_role_secret_name(t))
        password = None if role is None else _secret_value(role, "password")
        if not password:
            raise TenantNotReady(Reason.SECRET_NOT_FOUND,
                                 f"Secret {t.namespace}/{manifests.app_role_secret_name(t)} "
                                 "holds no password yet")
        return (f"postgresql://{manifests.APP_ROLE}:{password}@{manifests.cnpg_rw_host(t)}:"
                f"5432/{manifests.DATABASE_NAME}")

    async def pool(self, dsn: str) -> Pool:
        async with self._lock:
            pool = self._pools.get(dsn)
            if pool is None:
                pool = await create_pool(dsn, min_size=1, max_size=self._pool_max)
                self._pools[dsn] = pool
            return pool

    async def pool_for(self, namespace: str, tenant: str) -> Pool:
        """The pool of a tenant's database, for Offers and PartnerAgreements.

        Raises :class:`TenantNotReady` when the Tenant does not exist or its database cannot
        be resolved yet.
        """
        cached = self._resolved.get((namespace, tenant))
        if cached is not None and time.monotonic() - cached.at < self._cache_s:
            return await self.pool(cached.dsn)
        body = await self._kube.get(f"{API_GROUP}/{API_VERSION}", "Tenant", namespace, tenant)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            raise TenantNotReady(Reason.WAITING_FOR_TENANT,
                                 f"Tenant {namespace}/{tenant} does not exist")
        try:
            spec = TenantSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            raise TenantNotReady(Reason.INVALID_SPEC,
                                 f"Tenant {namespace}/{tenant} has an invalid spec") from exc
        workload = TenantWorkload(manifests.Owner.of(body), namespace, spec, image="")
        return await self.pool(await self.resolve(workload))

    def forget(self, namespace: str, tenant: str) -> None:
        self._resolved.pop((namespace, tenant), None)

    async def close(self) -> None:
        async with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)
