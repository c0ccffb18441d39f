"""Facts back-dated into a period already invoiced, against real PostgreSQL: the next bill of
the account catches up (a charge or a credit for the earlier period, on lines naming it); the
issued invoices stay as they were; billing the same facts again charges nothing.

The example tenant (Europe/Berlin, cycle day 1, 19 % VAT included): mobile-m 19.99 a month and
data-boost 4.99 a month, both in advance with daily proration."""

from __future__ import annotations

from datetime import date

from tests.billing.test_account_timezones import account, lines_of
from tests.billing.test_bill_run import ledger_check
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tollgate_core.billing.run import bill_run
from tollgate_core.domain.billing import BillPeriod, local_midnight
from tollgate_core.store import accounts_repo
from tollgate_core.store.db import Pool, tenant_tx

TZ = "Europe/Berlin"
JUNE = BillPeriod(date(2026, 6, 1), date(2026, 7, 1))  # 30 days
JULY = JUNE.next()  # 31 days
AUGUST = JULY.next()
SEPTEMBER = AUGUST.next()


async def invoices_of(pool: Pool, tenant: str) -> list[tuple[object, ...]]:
    async with tenant_tx(pool, tenant) as conn:
        return [tuple(r) for r in await conn.fetch(
            "SELECT period_start, number, total_micros, state FROM invoices ORDER BY number")]


async def test_a_subscription_back_dated_into_an_invoiced_period_is_charged_next_time(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    # On mobile-m since 20 May; the tenant's first bill run is June's, so May is never
    # charged (the earliest period looked at again is the first one billed).
    customer, plan = await account(pool, tenant_name, None, local_midnight(date(2026, 5, 20),
                                                                           TZ))
    assert (await bill_run(pool, tenant_name, JUNE)).documents == 1
    assert await lines_of(pool, tenant_name, customer, JUNE, "recurring") == [
        (JUNE.start, 30, 19_990_000, 16_800_000, 3_190_000),
        (JULY.start, 31, 19_990_000, 16_800_000, 3_190_000)]
    june_invoice = await invoices_of(pool, tenant_name)

    # After June's invoice, an agent enters data-boost as started on 16 June.
    async with tenant_tx(pool, tenant_name) as conn:
        boost = await accounts_repo.create_subscription(
            conn, tenant_name, customer, "data-boost", "4917000000001", 1,
            local_midnight(date(2026, 6, 16), TZ))
    assert (await bill_run(pool, tenant_name, JULY)).documents == 1
    # July's invoice: June caught up for data-boost, 15 of 30 days: 4.99 × 15/30 = 2.495
    # → 2.50 (half-even: 2.49|5 goes to the even cent), VAT 2.50 × 19/119 = 0.3992 → 0.40;
    # July, which June's invoice would have charged in advance, 4.99 (VAT 0.80); August in
    # advance for both subscriptions. mobile-m's June and July were charged: no line.
    async with tenant_tx(pool, tenant_name) as conn:
        july = [tuple(r) for r in await conn.fetch(
            "SELECT l.subscription_id, l.coverage_start, l.coverage_end, l.quantity,"
            " l.net_micros + l.tax_micros, l.tax_micros, l.description FROM invoice_lines l"
            " JOIN invoices i USING (tenant_id, invoice_id) WHERE i.period_start = $1"
            " ORDER BY l.line_no", JULY.start)]
    assert [ln[:6] for ln in july] == [
        (plan, AUGUST.start, AUGUST.end, 31, 19_990_000, 3_190_000),
        (boost.subscription_id, JUNE.start, JUNE.end, 15, 2_500_000, 400_000),
        (boost.subscription_id, JULY.start, JULY.end, 31, 4_990_000, 800_000),
        (boost.subscription_id, AUGUST.start, AUGUST.end, 31, 4_990_000, 800_000)]
    assert july[1][6] == ("Data Boost 2 GB: boost-fee 2026-06-01 to 2026-06-30"
                          " (period billed before; 15 of 30 days)")
    # June's invoice is untouched.
    assert (await invoices_of(pool, tenant_name))[:1] == june_invoice

    # Billing July again issues nothing; August charges September only.
    assert (await bill_run(pool, tenant_name, JULY)).documents == 0
    assert (await bill_run(pool, tenant_name, AUGUST)).documents == 1
    async with tenant_tx(pool, tenant_name) as conn:
        august = [tuple(r) for r in await conn.fetch(
            "SELECT l.offer, l.coverage_start, l.net_micros + l.tax_micros FROM invoice_lines l"
            " JOIN invoices i USING (tenant_id, invoice_id) WHERE i.period_start = $1"
            " ORDER BY l.line_no", AUGUST.start)]
    assert august == [("mobile-m", SEPTEMBER.start, 19_990_000),
                      ("data-boost", SEPTEMBER.start, 4_990_000)]
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_a_cancellation_back_dated_into_an_invoiced_period_is_credited_next_time(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    customer, plan = await account(pool, tenant_name, None, local_midnight(JUNE.start, TZ))
    for period in (JUNE, JULY):  # June charges June and July, July charges August
        assert (await bill_run(pool, tenant_name, period)).documents == 1
    # Then the cancellation is recorded as of 21 July (the first day not in service).
    async with tenant_tx(pool, tenant_name) as conn:
        await conn.execute("UPDATE subscriptions SET status = 'cancelled', ended_at = $2"
                           " WHERE subscription_id = $1", plan,
                           local_midnight(date(2026, 7, 21), TZ))
    assert (await bill_run(pool, tenant_name, AUGUST)).documents == 1
    # July: 20 of 31 days are worth 19.99 × 20/31 = 12.896774, so 7.093226 comes back:
    # -7.09, VAT -7.09 × 19/119 = -1.1320 → -1.13, net -5.96. August, paid in advance,
    # comes back whole: -19.99 (VAT -3.19). Nothing for September.
    assert await lines_of(pool, tenant_name, customer, AUGUST, "recurring") == [
        (JULY.start, 20, -7_093_226, -5_960_000, -1_130_000),
        (AUGUST.start, 0, -19_990_000, -16_800_000, -3_190_000)]
    invoices = await invoices_of(pool, tenant_name)
    assert invoices[2] == (AUGUST.start, 3, -27_080_000, "paid")  # nothing is due
    # The customer owes June and 20 days of July: 19.99 + 12.90 = 32.89.
    async with tenant_tx(pool, tenant_name) as conn:
        balance = await conn.fetchval("SELECT balance_micros FROM ledger_accounts"
                                      " WHERE account_id = $1", f"customer:{customer}")
    assert balance == -32_890_000
    # Billing again credits nothing more.
    assert (await bill_run(pool, tenant_name, AUGUST)).documents == 0
    assert (await bill_run(pool, tenant_name, SEPTEMBER)).documents == 0
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_catch_up_reaches_back_three_cycles_at_most(
        pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    customer, _ = await account(pool, tenant_name, None, local_midnight(JUNE.start, TZ))
    for period in (JUNE, JULY, AUGUST, SEPTEMBER):
        await bill_run(pool, tenant_name, period)
    # data-boost entered before October's run with its start back-dated to 1 June: October's
    # invoice catches up July, August and September (three cycles), not June; then October
    # and November (in advance).
    async with tenant_tx(pool, tenant_name) as conn:
        await accounts_repo.create_subscription(conn, tenant_name, customer, "data-boost",
                                                "4917000000002", 1,
                                                local_midnight(JUNE.start, TZ))
    october = SEPTEMBER.next()
    await bill_run(pool, tenant_name, october)
    async with tenant_tx(pool, tenant_name) as conn:
        coverages = [r["coverage_start"] for r in await conn.fetch(
            "SELECT l.coverage_start FROM invoice_lines l JOIN invoices i"
            " USING (tenant_id, invoice_id) WHERE i.period_start = $1"
            " AND l.offer = 'data-boost' ORDER BY l.line_no", october.start)]
    assert coverages == [JULY.start, AUGUST.start, SEPTEMBER.start, october.start,
                         october.end]
