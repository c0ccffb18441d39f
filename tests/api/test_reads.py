"""The API's reads on real PostgreSQL: DataLoader batches dispatched together share one
read-only transaction of the tenant (a failing one fails alone), and the API's pool sends
the session reset with COMMIT, leaving nothing behind for the next user."""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.conftest import Servers
from tollgate_api.app import open_pool
from tollgate_api.loaders import Loaders, Waves
from tollgate_core.store.db import Connection, Pool, tenant_tx


@pytest_asyncio.fixture
async def api_pool(servers: Servers) -> AsyncIterator[Pool]:
    pool = await open_pool(servers.app_dsn)
    yield pool
    await pool.close()


def read(sql: str) -> Any:
    async def run(conn: Connection) -> Any:
        return await conn.fetchval(sql)
    return run


async def test_reads_asked_in_one_turn_share_one_transaction_of_the_tenant(
        api_pool: Pool, tenant_name: str, statements: list[str]) -> None:
    waves = Waves(api_pool, tenant_name)
    started = "SELECT transaction_timestamp()::text || ' ' || pg_backend_pid()"
    results = await asyncio.gather(
        waves.read(read(started)), waves.read(read(started)),
        waves.read(read("SELECT current_setting('tollgate.tenant') || ' '"
                        " || current_setting('transaction_read_only')"
                        " || ' ' || current_setting('plan_cache_mode')")))
    assert results[0] == results[1]  # one transaction on one connection
    assert results[2] == f"{tenant_name} on force_generic_plan"
    # BEGIN with the tenant, then 3 reads
    assert len(statements) == 4 and statements[0].startswith("BEGIN")

    # The next level of the request, a few turns later: the same transaction.
    assert await waves.read(read(started)) == results[0]
    assert len(statements) == 5

    # Idle for IDLE_TURNS turns: committed (with the session reset), the connection given
    # back, whatever the request is doing meanwhile.
    for _ in range(Waves.IDLE_TURNS + 1):
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    assert len(statements) == 6 and statements[-1].startswith("COMMIT;")
    assert api_pool.get_idle_size() == api_pool.get_size()
    later = await waves.read(read(started))
    assert later != results[0] and statements[-2].startswith("BEGIN")

    waves.release()  # the operation ended: committed at once
    await asyncio.sleep(0.1)
    assert statements[-1].startswith("COMMIT;") and api_pool.get_idle_size() == api_pool.get_size()


async def test_a_failing_read_fails_alone(api_pool: Pool, tenant_name: str) -> None:
    waves = Waves(api_pool, tenant_name)
    results = await asyncio.gather(
        waves.read(read("SELECT 1")), waves.read(read("SELECT 1 / 0")),
        waves.read(read("SELECT current_setting('tollgate.tenant')")),
        return_exceptions=True)
    assert results[0] == 1 and results[2] == tenant_name
    assert isinstance(results[1], asyncpg.DivisionByZeroError)


async def test_the_session_reset_travels_with_commit(api_pool: Pool, tenant_name: str,
                                                     statements: list[str]) -> None:
    async with tenant_tx(api_pool, tenant_name) as tx:
        await tx.execute("SET application_name = 'left-behind'")  # session-wide
        await tx.execute("LISTEN left_behind")
    assert statements[-1].startswith("COMMIT;") and "RESET ALL" in statements[-1]
    before = len(statements)
    async with api_pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") != "left-behind"
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    assert len(statements) == before + 3  # the two reads here and this release's own reset

    # A transaction that fails is rolled back and reset on release, as asyncpg does.
    async def failing() -> None:
        async with tenant_tx(api_pool, tenant_name) as tx:
            await tx.execute("SET application_name = 'left-behind'")
            await tx.fetchval("SELECT 1 / 0")

    with pytest.raises(asyncpg.DivisionByZeroError):
        await failing()
    async with api_pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") != "left-behind"


async def test_a_requests_loaders_are_freed_without_the_cyclic_collector(
        api_pool: Pool, tenant_name: str) -> None:
    gc.disable()
    try:
        loaders = Loaders(api_pool, tenant_name)
        assert await loaders.customer.load(uuid.uuid4()) is None
        assert await loaders.balance.load(uuid.uuid4()) is None
        gone = weakref.ref(loaders)
        del loaders
        await asyncio.sleep(0)  # the wave's task has ended
        assert gone() is None
    finally:
        gc.enable()
