"""Accruals follow the exactly-once rules of the batch they are booked in: a redelivered batch
accrues nothing more, and concurrent batches never lose a tiered agreement's running gross."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from fractions import Fraction

import asyncpg

from tests.conftest import Servers
from tests.factories import usage_payload
from tests.integration.test_exactly_once import Delivered
from tests.running import eventually
from tests.settlement.test_settlement_flow import (
    API_LINE,
    TIERED_LINE,
    assert_ledger_balanced,
    at,
    balances,
    line,
    months_ago,
    owner_fetch,
    partner_catalog,
    shares_by_record,
)
from tollgate_core.domain.settlement import tiered_share
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool

SECOND_TIERED_LINE = "491705550009"


def engine(servers: Servers, pool: Pool, tenant: str) -> ChargingEngine:
    return ChargingEngine(ChargingSettings(tenant=tenant, database_url=servers.app_dsn,
                                           nats_url=servers.nats_url), pool)


def calls(tenant: str, msisdn: str, counts: list[int], day: int) -> list[Delivered]:
    when = at(months_ago(1) + timedelta(days=day))
    return [Delivered(f"tg.{tenant}.usage.api",
                      usage_payload(tenant, msisdn, n, service="api", unit="events",
                                    start_time=when)[1]) for n in counts]


async def test_a_redelivered_batch_accrues_once(pool: Pool, servers: Servers,
                                                tenant_name: str) -> None:
    await partner_catalog(pool, tenant_name)
    await line(pool, tenant_name, "partner-api", API_LINE)
    await line(pool, tenant_name, "partner-tiered", TIERED_LINE)
    charging = engine(servers, pool, tenant_name)
    batch = calls(tenant_name, API_LINE, [1, 3], 2) + calls(tenant_name, TIERED_LINE, [2, 3], 2)
    first = await charging.process(batch)
    assert (first.rated, first.duplicates) == (4, 0)
    accrued = await shares_by_record(servers, tenant_name)
    ledger = await balances(servers, tenant_name)
    # see test_settlement_flow: 1 and 3 calls → videoco 1,712 + 5,137, bigco 2,124 + 6,371;
    # tiered 2 then 3 calls → 2,740 + 7,810
    assert (ledger["partnerPayable:videoco"], ledger["partnerPayable:bigco"],
            ledger["partnerPayable:tierco"]) == (6_849, 8_495, 10_550)
    # The crash-after-commit case: the same messages again change nothing.
    again = await charging.process(batch)
    assert (again.rated, again.duplicates) == (0, 4)
    assert await shares_by_record(servers, tenant_name) == accrued
    assert await balances(servers, tenant_name) == ledger
    gross = await owner_fetch(servers, "SELECT gross_micros FROM partner_gross"
                              " WHERE tenant_id = $1", tenant_name)
    assert [r["gross_micros"] for r in gross] == [27_400 + 41_100]
    await assert_ledger_balanced(servers, tenant_name)


async def test_concurrent_batches_keep_the_tiered_month_exact(pool: Pool, servers: Servers,
                                                              tenant_name: str) -> None:
    await partner_catalog(pool, tenant_name)
    await line(pool, tenant_name, "partner-tiered", TIERED_LINE)
    await line(pool, tenant_name, "partner-tiered", SECOND_TIERED_LINE)
    # One call first, so the month's counter row exists. Then a transaction holds that row
    # while two engines rate two lines' batches; once both wait for it, it lets go. Without
    # the counter lock both would read the same running gross and one update would be lost.
    first, second = engine(servers, pool, tenant_name), engine(servers, pool, tenant_name)
    assert (await first.process(calls(tenant_name, TIERED_LINE, [1], 3))).rated == 1
    counts = [1, 2, 3, 4, 5, 6, 7] * 3
    holder = await asyncpg.connect(servers.owner_dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM partner_gross WHERE tenant_id = $1 FOR UPDATE",
                                 tenant_name)
            both = asyncio.gather(
                first.process(calls(tenant_name, TIERED_LINE, counts, 4)),
                second.process(calls(tenant_name, SECOND_TIERED_LINE, counts, 5)))

            async def both_wait() -> bool:
                return int(await holder.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted")) >= 2

            await eventually(both_wait)
        outcomes = await both
    finally:
        await holder.close()
    assert [o.rated for o in outcomes] == [21, 21]
    records = await shares_by_record(servers, tenant_name)
    total_gross = (1 + 2 * sum(counts)) * 13_700
    assert sum(g for g, _, _ in records.values()) == total_gross
    rows = await owner_fetch(servers, "SELECT gross_micros FROM partner_gross"
                             " WHERE tenant_id = $1", tenant_name)
    assert [r["gross_micros"] for r in rows] == [total_gross]  # no lost update
    # Graduated shares add up over the month whatever the order: the integer shares are
    # within one micro per record of the exact share of the whole month.
    tiers = ((0, Fraction(1, 10)), (50_000, Fraction(3, 10)))
    exact = tiered_share(tiers, 0, total_gross)
    paid = sum(s["tierco"] for _, _, s in records.values())
    assert abs(paid - exact) < len(records)
    for gross, operator, shares in records.values():
        assert operator + shares["tierco"] == gross
    assert (await balances(servers, tenant_name))["partnerPayable:tierco"] == paid
    await assert_ledger_balanced(servers, tenant_name)
