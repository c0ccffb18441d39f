"""The operator SIGKILLed in the middle of a reconcile converges when it comes back.

To stop it at a known point, the test holds the tenant's row lock in PostgreSQL: the
operator's publish (or tenant upsert) waits on it inside its transaction; the test sees the
wait in `pg_stat_activity`, kills the process, releases the lock and starts a new operator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from tests.conftest import Servers
from tests.harness.controlplane import ControlPlane
from tests.operator.operator_fixtures import (
    OperatorProcess,
    condition,
    create,
    database_namespace,
    eventually,
    eventually_async,
    get_resource,
    offer_document,
    patch,
    tenant_document,
)
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx

LOCK_WAITS = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
              " AND query ILIKE $1 AND pid <> pg_backend_pid()")


@pytest.fixture
def ns(control_plane: ControlPlane, servers: Servers) -> str:
    return database_namespace(control_plane, "tgkill", servers.app_dsn, servers.owner_dsn)


@pytest.fixture
def operator_process(control_plane: ControlPlane, ns: str, tmp_path: Path
                     ) -> Iterator[OperatorProcess]:
    process = OperatorProcess(control_plane.kubeconfig, (ns,), tmp_path / "operator.log")
    try:
        yield process
    finally:
        process.stop()
        print(f"\n--- operator log (tail) ---\n{process.tail()}")


@pytest_asyncio.fixture
async def watcher(servers: Servers) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A connection of the database owner, to see who waits for a lock."""
    conn = await asyncpg.connect(servers.owner_dsn)
    yield conn
    await conn.close()


def tenant_synced(cp: ControlPlane, ns: str, tenant: str, generation: int) -> bool:
    synced = condition(get_resource(cp, "Tenant", ns, tenant), "CatalogSynced")
    return synced.get("status") == "True" and synced.get("observedGeneration") == generation


async def latest_revision(pool: Pool, tenant: str) -> int | None:
    async with tenant_tx(pool, tenant) as conn:
        latest = await catalog_repo.latest_revision(conn, tenant)
    return None if latest is None else latest.revision


async def test_killed_while_publishing_an_offer_it_publishes_once_after_restart(
        control_plane: ControlPlane, ns: str, tenant_name: str, pool: Pool,
        operator_process: OperatorProcess,
        watcher: asyncpg.Connection[asyncpg.Record]) -> None:
    cp = control_plane
    operator_process.start()
    create(cp, tenant_document(tenant_name, ns))
    await eventually(lambda: tenant_synced(cp, ns, tenant_name, 1), "tenant synced", 60)
    assert await latest_revision(pool, tenant_name) is None

    async with tenant_tx(pool, tenant_name) as conn:
        await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_name)
        create(cp, offer_document("mobile-s", ns, tenant_name))

        async def publishing() -> bool:
            return bool(await watcher.fetchval(LOCK_WAITS, "%FROM tenants%FOR UPDATE%"))

        await eventually_async(publishing, "the operator waits inside its publish transaction", 30)
        operator_process.kill()
    # Killed mid-transaction: nothing was published, no status was written.
    assert await latest_revision(pool, tenant_name) is None
    assert condition(get_resource(cp, "Offer", ns, "mobile-s"), "Published") == {}

    operator_process.start()

    def published() -> int | None:
        body = get_resource(cp, "Offer", ns, "mobile-s")
        if condition(body, "Published").get("status") != "True":
            return None
        return int((body or {})["status"]["publishedRevision"])

    assert await eventually(published, "published after restart", 60) == 1
    assert await latest_revision(pool, tenant_name) == 1  # exactly one revision


async def test_killed_while_syncing_a_tenant_it_converges_after_restart(
        control_plane: ControlPlane, ns: str, tenant_name: str, pool: Pool,
        operator_process: OperatorProcess,
        watcher: asyncpg.Connection[asyncpg.Record]) -> None:
    cp = control_plane
    operator_process.start()
    create(cp, tenant_document(tenant_name, ns))
    await eventually(lambda: tenant_synced(cp, ns, tenant_name, 1), "tenant synced", 60)

    async with tenant_tx(pool, tenant_name) as conn:
        await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_name)
        patch(cp, "Tenant", ns, tenant_name,
              {"spec": {"billing": {"cycleDay": 7}, "charging": {"replicas": 3}}})

        async def upserting() -> bool:
            return bool(await watcher.fetchval(LOCK_WAITS, "%INSERT INTO tenants%"))

        await eventually_async(upserting, "the operator waits inside the tenant upsert", 30)
        operator_process.kill()
    assert not tenant_synced(cp, ns, tenant_name, 2)

    operator_process.start()
    await eventually(lambda: tenant_synced(cp, ns, tenant_name, 2),
                     "generation 2 synced after restart", 60)
    deployment = cp.api("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/"
                               f"{tenant_name}-charging")
    assert deployment["spec"]["replicas"] == 3
    async with tenant_tx(pool, tenant_name) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant_name)
    assert spec is not None and spec.billing.cycle_day == 7
