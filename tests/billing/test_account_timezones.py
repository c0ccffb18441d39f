"""Accounts billed in their own timezone, against real PostgreSQL: a tenant in Europe/Berlin
with accounts in America/New_York and Asia/Tokyo. Bill cycles start on the tenant's cycle day
at local midnight of the account's zone; proration days and usage periods are its local days;
the engine bills each account once its period has ended there, each exactly once.

March 2026 is a month of DST changes in both zones (New York: 8 March, Berlin: 29 March), so
its boundaries are 05:00 UTC (EST) on 1 March and 04:00 UTC (EDT) on 1 April in New York,
23:00 UTC (CET) on 28 February and 22:00 UTC (CEST) on 31 March in Berlin."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from tests.billing.test_bill_run import ledger_check
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tollgate_core.billing.run import bill_run
from tollgate_core.billing.service import billing_pass
from tollgate_core.domain.billing import BillPeriod, local_midnight
from tollgate_core.store import accounts_repo
from tollgate_core.store.db import Pool, tenant_tx

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
TOKYO = "Asia/Tokyo"
FEB = BillPeriod(date(2026, 2, 1), date(2026, 3, 1))
MARCH = FEB.next()
APRIL = MARCH.next()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
        ) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


async def account(pool: Pool, tenant: str, timezone: str | None, started: datetime
                  ) -> tuple[uuid.UUID, uuid.UUID]:
    """(customer, subscription): a postpaid customer billed in `timezone` (None: the
    tenant's) on the example plan mobile-m (19.99 a month in advance, 19 % VAT included)."""
    async with tenant_tx(pool, tenant) as conn:
        c = await accounts_repo.create_customer(conn, tenant, "EUR", "C", "c@x.de", "consumer",
                                                "postpaid", timezone)
        s = await accounts_repo.create_subscription(
            conn, tenant, c.customer_id, "mobile-m", f"49170{uuid.uuid4().int % 10**8:08d}", 1,
            started)
    return c.customer_id, s.subscription_id


async def rated(pool: Pool, tenant: str, customer: uuid.UUID, subscription: uuid.UUID,
                records: list[tuple[datetime, int]]) -> None:
    """Rated records (start time, exact micros) as the charging engine leaves them."""
    async with tenant_tx(pool, tenant) as conn:
        await conn.executemany(
            "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id,"
            " service, quantity, allowance_units, chargeable_units, amount_micros, currency,"
            " price_name, catalog_revision, start_time) VALUES ($1, $2, $3, $4, 'data', 1, 0,"
            " 1, $5, 'EUR', 'data-payg', 1, $6)",
            [(tenant, uuid.uuid4(), subscription, customer, micros, start)
             for start, micros in records])


async def lines_of(pool: Pool, tenant: str, customer: uuid.UUID, period: BillPeriod,
                   kind: str) -> list[tuple[object, ...]]:
    async with tenant_tx(pool, tenant) as conn:
        rows = await conn.fetch(
            "SELECT l.coverage_start, l.quantity, l.exact_micros, l.net_micros, l.tax_micros"
            " FROM invoice_lines l JOIN invoices i USING (tenant_id, invoice_id)"
            " WHERE i.customer_id = $1 AND i.period_start = $2 AND l.kind = $3"
            " ORDER BY l.line_no", customer, period.start, kind)
    return [tuple(r) for r in rows]


async def test_usage_at_local_midnight_and_proration_follow_the_accounts_timezone(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    ny, ny_sub = await account(pool, tenant_name, NEW_YORK, local_midnight(date(2026, 1, 1),
                                                                            NEW_YORK))
    berlin, berlin_sub = await account(pool, tenant_name, None,
                                       local_midnight(date(2026, 1, 1), BERLIN))
    async with tenant_tx(pool, tenant_name) as conn:
        stored = await accounts_repo.get_customer(conn, ny)
    assert stored is not None and stored.timezone == NEW_YORK
    # The same four records for both accounts, a second either side of New York's
    # midnights at the start and the end of March.
    records = [(utc(2026, 3, 1, 4, 59, 59), 1_110_000),  # NY: 28 Feb 23:59:59 EST
               (utc(2026, 3, 1, 5), 2_220_000),  # NY: 1 Mar 00:00 EST; Berlin 06:00 CET
               (utc(2026, 4, 1, 3, 59, 59), 3_330_000),  # NY: 31 Mar 23:59:59 EDT
               (utc(2026, 4, 1, 4), 4_440_000)]  # NY: 1 Apr 00:00 EDT; Berlin 06:00 CEST
    await rated(pool, tenant_name, ny, ny_sub, records)
    await rated(pool, tenant_name, berlin, berlin_sub, records)

    assert (await bill_run(pool, tenant_name, FEB)).documents == 2
    # Entered in March, started at 03:30 UTC on 15 March: 23:30 EDT on 14 March in New York
    # (18 of March's 31 days in service), 04:30 CET on 15 March in Berlin (17 days).
    mid_start = utc(2026, 3, 15, 3, 30)
    ny_mid, _ = await account(pool, tenant_name, NEW_YORK, mid_start)
    berlin_mid, _ = await account(pool, tenant_name, BERLIN, mid_start)  # its own, the same
    assert (await bill_run(pool, tenant_name, MARCH)).documents == 4
    assert (await bill_run(pool, tenant_name, APRIL)).documents == 4

    # New York: February holds the record of 28 February (local), March the records of 1 and
    # 31 March (2.22 + 3.33), April the one of 1 April. Berlin: both records of 1 March
    # 05:59 and 06:00 local are March's (1.11 + 2.22), both of 1 April April's (3.33 + 4.44).
    ny_usage = [await lines_of(pool, tenant_name, ny, p, "usage") for p in (FEB, MARCH, APRIL)]
    berlin_usage = [await lines_of(pool, tenant_name, berlin, p, "usage")
                    for p in (FEB, MARCH, APRIL)]
    assert [[ln[2] for ln in lines] for lines in ny_usage] == [
        [1_110_000], [5_550_000], [4_440_000]]
    assert [[ln[2] for ln in lines] for lines in berlin_usage] == [
        [], [3_330_000], [7_770_000]]

    # Proration in the account's days. 19.99 × 18/31 = 11.607097 → 11.61, VAT included
    # 11.61 × 19/119 = 1.8537 → 1.85, net 9.76; 19.99 × 17/31 = 10.962258 → 10.96, VAT
    # 1.7499 → 1.75, net 9.21. April is charged in advance in full (19.99: 16.80 + 3.19).
    assert await lines_of(pool, tenant_name, ny_mid, MARCH, "recurring") == [
        (MARCH.start, 18, 11_607_097, 9_760_000, 1_850_000),
        (APRIL.start, 30, 19_990_000, 16_800_000, 3_190_000)]
    assert await lines_of(pool, tenant_name, berlin_mid, MARCH, "recurring") == [
        (MARCH.start, 17, 10_962_258, 9_210_000, 1_750_000),
        (APRIL.start, 30, 19_990_000, 16_800_000, 3_190_000)]
    async with tenant_tx(pool, tenant_name) as conn:
        periods = {tuple(r) for r in await conn.fetch(
            "SELECT period_start, period_end, bill_date FROM invoices"
            " WHERE period_start = $1", MARCH.start)}
    assert periods == {(MARCH.start, MARCH.end, MARCH.end)}  # the same local dates for all
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_the_engine_bills_each_account_once_its_period_has_ended_in_its_timezone(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    started = utc(2026, 1, 30)  # before 1 February in every zone
    tokyo, _ = await account(pool, tenant_name, TOKYO, started)
    berlin, _ = await account(pool, tenant_name, None, started)
    ny, _ = await account(pool, tenant_name, NEW_YORK, started)

    async def march_documents() -> list[tuple[int, uuid.UUID, int]]:
        async with tenant_tx(pool, tenant_name) as conn:
            return [(r["number"], r["customer_id"], r["total_micros"]) for r in await conn.fetch(
                "SELECT number, customer_id, total_micros FROM invoices WHERE period_start = $1"
                " ORDER BY number", MARCH.start)]

    async def march_finished() -> bool:
        async with tenant_tx(pool, tenant_name) as conn:
            return bool(await conn.fetchval(
                "SELECT finished_at IS NOT NULL FROM bill_runs WHERE period_start = $1",
                MARCH.start))

    # 2 March: February has ended everywhere; every account is billed for it (1 to 3).
    await billing_pass(pool, tenant_name, utc(2026, 3, 2), batch=10)
    async with tenant_tx(pool, tenant_name) as conn:
        assert await conn.fetchval("SELECT count(*) FROM invoices WHERE period_start = $1",
                                   FEB.start) == 3
    # 16:00 UTC on 31 March: 1 April 01:00 in Tokyo, still March in Berlin and New York.
    # The March run starts with the Tokyo account alone (April in advance: 19.99).
    await billing_pass(pool, tenant_name, utc(2026, 3, 31, 16), batch=10)
    assert await march_documents() == [(4, tokyo, 19_990_000)]
    assert not await march_finished()
    # 02:00 UTC on 1 April: over in Berlin (04:00 CEST), not in New York (22:00 EDT).
    await billing_pass(pool, tenant_name, utc(2026, 4, 1, 2), batch=10)
    await billing_pass(pool, tenant_name, utc(2026, 4, 1, 3, 59, 59), batch=10)
    assert await march_documents() == [(4, tokyo, 19_990_000), (5, berlin, 19_990_000)]
    assert not await march_finished()
    # Midnight in New York: the last account is billed and the run is finished.
    await billing_pass(pool, tenant_name, utc(2026, 4, 1, 4), batch=10)
    await billing_pass(pool, tenant_name, utc(2026, 4, 1, 5), batch=10)
    assert await march_documents() == [(4, tokyo, 19_990_000), (5, berlin, 19_990_000),
                                       (6, ny, 19_990_000)]
    assert await march_finished()
    async with tenant_tx(pool, tenant_name) as conn:
        numbers = [r["number"] for r in await conn.fetch(
            "SELECT number FROM invoices WHERE series = 'invoice' ORDER BY number")]
    assert numbers == list(range(1, 7))
    assert await ledger_check(servers, tenant_name) == (0, 0)
