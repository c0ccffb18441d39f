"""Invariant 1 at the batch level: a redelivered batch changes nothing (inbox), and a batch
with the same event twice rates it once."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from tests.conftest import Servers
from tests.factories import install_example_catalog, usage_payload
from tests.integration.test_walking_skeleton import MSISDN, register_and_order
from tests.running import Api
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool

MIB = 1024**2


@dataclass
class Delivered:
    """A message as JetStream hands it over (subject, data, headers)."""

    subject: str
    data: bytes
    header: dict[str, str] | None = None


async def ledger_state(servers: Servers, tenant: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM rated_usage WHERE tenant_id = $1) AS rated,"
            " (SELECT count(*) FROM transfers WHERE tenant_id = $1) AS transfers,"
            " (SELECT coalesce(sum(amount_micros), 0) FROM transfers WHERE tenant_id = $1)"
            " AS moved", tenant)
    finally:
        await conn.close()
    assert row is not None
    return row["rated"], row["transfers"], row["moved"]


async def test_redelivered_batch_is_rated_once(api: Api, pool: Pool, servers: Servers,
                                               tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    plan = await register_and_order(api, api.token(tenant_name))
    assert plan
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)
    # 6 × 1 GiB: 5 GiB allowance then 1 GiB paid at 0.01 EUR/MiB = 10.24 EUR.
    batch = [Delivered(f"tg.{tenant_name}.usage.data",
                       usage_payload(tenant_name, MSISDN, 1024 * MIB)[1]) for _ in range(6)]
    first = await engine.process(batch)
    assert (first.rated, first.duplicates) == (6, 0)
    before = await ledger_state(servers, tenant_name)
    assert before == (6, 1, 10_240_000)

    # The crash-after-commit case: the same messages come again.
    again = await engine.process(batch)
    assert (again.rated, again.duplicates) == (0, 6)
    assert await ledger_state(servers, tenant_name) == before


async def test_the_same_event_twice_in_one_batch_counts_once(api: Api, pool: Pool,
                                                             servers: Servers,
                                                             tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    await register_and_order(api, api.token(tenant_name))
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)
    _, payload = usage_payload(tenant_name, MSISDN, MIB)
    message = Delivered(f"tg.{tenant_name}.usage.data", payload)
    outcome = await engine.process([message, message])
    assert (outcome.rated, outcome.duplicates) == (1, 1)
