"""Bill runs against real PostgreSQL and NATS: usage rated by the real charging engine becomes
invoice lines naming their revision; recurring fees are prorated; numbers are gapless; a run
is resumable; late usage lands on the next invoice; the ledger stays balanced."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from nats.js import JetStreamContext

from tests.conftest import Servers
from tests.factories import install_example_catalog, usage_payload
from tests.running import StartEngine, eventually
from tollgate_core.billing import documents
from tollgate_core.billing.run import bill_run, last_closed_period
from tollgate_core.domain.billing import BillPeriod, local_midnight
from tollgate_core.domain.events import usage_subject
from tollgate_core.store import accounts_repo, catalog_repo
from tollgate_core.store.db import Pool, tenant_tx

GIB = 1024**3
TZ = "Europe/Berlin"


async def period_for(pool: Pool, tenant: str) -> BillPeriod:
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
    assert spec is not None
    return last_closed_period(datetime.now(UTC), spec)


async def customers(pool: Pool, tenant: str, count: int, started: datetime,
                    payment_type: str = "postpaid") -> list[tuple[uuid.UUID, str]]:
    """`count` customers on the example plan mobile-m, each with its own MSISDN."""
    out = []
    async with tenant_tx(pool, tenant) as conn:
        for i in range(count):
            c = await accounts_repo.create_customer(conn, tenant, "EUR", f"C{i}", f"c{i}@x.de",
                                                    "consumer", payment_type)
            msisdn = f"49170{uuid.uuid4().int % 10**8:08d}"
            await accounts_repo.create_subscription(conn, tenant, c.customer_id, "mobile-m",
                                                    msisdn, 1, started)
            out.append((c.customer_id, msisdn))
    return out


async def ledger_check(servers: Servers, tenant: str) -> tuple[int, int]:
    """(sum of all balances, accounts whose balance is not the sum of their transfers)."""
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        total = await conn.fetchval(
            "SELECT coalesce(sum(balance_micros), 0) FROM ledger_accounts WHERE tenant_id = $1",
            tenant)
        mismatched = await conn.fetchval("""
            SELECT count(*) FROM ledger_accounts a WHERE a.tenant_id = $1 AND a.balance_micros <>
              coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = a.tenant_id
                        AND t.credit_account = a.account_id), 0)
            - coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = a.tenant_id
                        AND t.debit_account = a.account_id), 0)""", tenant)
    finally:
        await conn.close()
    return int(total), int(mismatched)


async def test_usage_and_fees_become_an_invoice_with_exact_lines(
        pool: Pool, servers: Servers, js: JetStreamContext, charging: StartEngine,
        tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    start, _ = period.instants(TZ)
    # Subscribed on the 11th day of the period (local midnight of that day, Berlin time).
    (customer, msisdn), (quiet, _) = await customers(
        pool, tenant_name, 2, local_midnight(period.start + timedelta(days=10), TZ))
    await charging(tenant_name)
    # Six events of 1 GiB inside the period: five fill the 5 GiB allowance, the sixth is paid:
    # 1,024 MiB × 0.01 EUR = 10.24 EUR (prices include 19 % VAT in the DE example).
    for _ in range(6):
        _, payload = usage_payload(tenant_name, msisdn, GIB,
                                   start_time=start + timedelta(days=12))
        await js.publish(usage_subject(tenant_name, "data"), payload)

    async def rated() -> bool:
        async with tenant_tx(pool, tenant_name) as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM rated_usage") == 6)
    await eventually(rated)

    result = await bill_run(pool, tenant_name, period, batch=1)
    assert (result.documents, result.accounts_seen) == (2, 2)
    async with tenant_tx(pool, tenant_name) as conn:
        invoices = await conn.fetch("SELECT * FROM invoices ORDER BY number")
        lines = await conn.fetch("SELECT * FROM invoice_lines WHERE invoice_id = $1"
                                 " ORDER BY line_no", next(
                                     i["invoice_id"] for i in invoices
                                     if i["customer_id"] == customer))
    assert [i["number"] for i in invoices] == [1, 2]
    assert all(i["bill_no"].startswith(f"DE-{period.start:%Y}-0000000") for i in invoices)
    assert {i["customer_id"] for i in invoices} == {customer, quiet}
    days = period.days
    in_service = days - 10
    # Monthly fee 19.99, in advance: this period prorated (19.99 × in_service / days, rounded
    # half-even to cents), the next period in full; then the usage line of 10.24.
    prorated = round(19_990_000 * in_service / days / 10_000) * 10_000
    assert [(ln["kind"], ln["net_micros"] + ln["tax_micros"]) for ln in lines] == [
        ("recurring", prorated), ("recurring", 19_990_000), ("usage", 10_240_000)]
    assert all(ln["catalog_revision"] == 1 for ln in lines)
    assert lines[2]["exact_micros"] == 10_240_000
    # 19 % included: tax of 10.24 = 10.24 × 19/119 = 1.63496… → 1.63; net 8.61.
    assert (lines[2]["net_micros"], lines[2]["tax_micros"]) == (8_610_000, 1_630_000)
    mine = next(i for i in invoices if i["customer_id"] == customer)
    assert mine["total_micros"] == sum(ln["net_micros"] + ln["tax_micros"] for ln in lines)
    assert mine["total_micros"] == mine["net_micros"] + mine["tax_micros"]
    assert mine["state"] == "issued" and mine["due_date"] == period.end + timedelta(days=14)

    # The customer's ledger balance owes exactly the invoice total; the ledger balances.
    async with tenant_tx(pool, tenant_name) as conn:
        balance = await conn.fetchval("SELECT balance_micros FROM ledger_accounts"
                                      " WHERE account_id = $1", f"customer:{customer}")
    assert balance == -mine["total_micros"]
    assert await ledger_check(servers, tenant_name) == (0, 0)

    # Billing the period again issues nothing and takes no number.
    again = await bill_run(pool, tenant_name, period)
    assert again.documents == 0
    async with tenant_tx(pool, tenant_name) as conn:
        assert await conn.fetchval("SELECT next_number FROM document_series"
                                   " WHERE series = 'invoice'") == 3

    # The document as TMF678 JSON and as German HTML.
    doc = await documents.load(pool, tenant_name, invoice_id=mine["invoice_id"])
    assert doc is not None
    body = documents.to_json(doc)
    assert body["billNo"] == mine["bill_no"]
    assert body["taxIncludedAmount"]["value"] == f"{mine['total_micros'] / 1_000_000:.2f}"
    assert [r["catalogRevision"] for r in body["appliedCustomerBillingRate"]] == [1, 1, 1]
    assert body["appliedCustomerBillingRate"][2]["appliedTax"][0]["taxAmount"] == {
        "unit": "EUR", "value": "1.63"}
    page = documents.to_html(doc)
    assert "8,61\xa0€" in page and "1,63\xa0€" in page and mine["bill_no"] in page


async def test_a_run_stopped_midway_resumes_without_gaps_or_duplicates(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    await customers(pool, tenant_name, 25, local_midnight(period.start, TZ))
    first = await bill_run(pool, tenant_name, period, batch=4, workers=1, stop_after_batches=3)
    assert first.documents == 12
    rest = await bill_run(pool, tenant_name, period, batch=4)
    assert rest.documents == 13
    async with tenant_tx(pool, tenant_name) as conn:
        numbers = [r["number"] for r in await conn.fetch(
            "SELECT number FROM invoices ORDER BY number")]
        per_customer = await conn.fetchval(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM invoices GROUP BY customer_id) x")
        finished = await conn.fetchval("SELECT documents FROM bill_runs")
    assert numbers == list(range(1, 26))
    assert per_customer == 1
    assert finished == 25
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_usage_rated_after_the_run_goes_on_the_next_invoice(
        pool: Pool, servers: Servers, js: JetStreamContext, charging: StartEngine,
        tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    start, _ = period.instants(TZ)
    ((_, msisdn),) = await customers(pool, tenant_name, 1, local_midnight(period.start, TZ))
    await bill_run(pool, tenant_name, period)
    await charging(tenant_name)
    # Arrives late: started in the billed period, 6 GiB (1 GiB beyond the allowance: 10.24).
    _, payload = usage_payload(tenant_name, msisdn, 6 * GIB, start_time=start + timedelta(days=3))
    await js.publish(usage_subject(tenant_name, "data"), payload)

    async def rated() -> bool:
        async with tenant_tx(pool, tenant_name) as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM rated_usage") == 1)
    await eventually(rated)
    following = await bill_run(pool, tenant_name, period.next())
    assert following.documents == 1
    async with tenant_tx(pool, tenant_name) as conn:
        usage_lines = await conn.fetch(
            "SELECT i.period_start, l.exact_micros FROM invoice_lines l JOIN invoices i"
            " USING (tenant_id, invoice_id) WHERE l.kind = 'usage'")
    assert [(r["period_start"], r["exact_micros"]) for r in usage_lines] == [
        (period.next().start, 10_240_000)]
    # A third run (the period after) must not bill it again.
    await bill_run(pool, tenant_name, period.next().next())
    async with tenant_tx(pool, tenant_name) as conn:
        assert await conn.fetchval("SELECT count(*) FROM invoice_lines WHERE kind = 'usage'") == 1
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_prepaid_accounts_get_statements_and_never_go_below_zero(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    (customer, _), = await customers(pool, tenant_name, 1, local_midnight(period.start, TZ),
                                     payment_type="prepaid")
    async with tenant_tx(pool, tenant_name) as conn:  # 5.00 of credit for 2 × 19.99 of fees
        await accounts_repo.top_up(conn, tenant_name, customer, 5_000_000, "EUR", "tu-1")
    await bill_run(pool, tenant_name, period)
    async with tenant_tx(pool, tenant_name) as conn:
        doc = await conn.fetchrow("SELECT kind, series, number, state, total_micros, due_date"
                                  " FROM invoices")
        balances = {r["account_id"]: r["balance_micros"] for r in await conn.fetch(
            "SELECT account_id, balance_micros FROM ledger_accounts WHERE account_id = ANY($1)",
            [f"customer:{customer}", f"receivable:{customer}"])}
    assert doc is not None
    assert (doc["kind"], doc["series"], doc["number"], doc["state"], doc["due_date"]) == (
        "statement", "statement", 1, "settled", None)
    assert balances[f"customer:{customer}"] == 0
    assert balances[f"receivable:{customer}"] == -(doc["total_micros"] - 5_000_000)
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_bill_runs_of_two_tenants_are_isolated(pool: Pool, tenant_name: str) -> None:
    other = f"{tenant_name}b"
    for t in (tenant_name, other):
        await install_example_catalog(pool, t)
    period = await period_for(pool, tenant_name)
    await customers(pool, tenant_name, 2, local_midnight(period.start, TZ))
    await customers(pool, other, 3, local_midnight(period.start, TZ))
    results = await asyncio.gather(bill_run(pool, tenant_name, period),
                                   bill_run(pool, other, period))
    assert [r.documents for r in results] == [2, 3]
    async with tenant_tx(pool, other) as conn:  # each tenant numbers its own series from 1
        assert [r["number"] for r in await conn.fetch(
            "SELECT number FROM invoices ORDER BY number")] == [1, 2, 3]


async def test_partner_shares_recurring_fees_of_its_offer(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    started = local_midnight(period.start, TZ)
    ((customer, msisdn),) = await customers(pool, tenant_name, 1, started)
    async with tenant_tx(pool, tenant_name) as conn:
        await accounts_repo.create_subscription(conn, tenant_name, customer, "data-boost",
                                                msisdn, 1, started)
    await bill_run(pool, tenant_name, period)
    # data-boost costs 4.99 a month, 19 % VAT included: tax 4.99 × 19/119 = 0.797 → 0.80,
    # net 4.19. StreamFlix gets 30 % of the net: 1.257 per month; billed in advance, this
    # invoice charges this month and the next: 2 × 1.257 = 2.514.
    async with tenant_tx(pool, tenant_name) as conn:
        boost = await conn.fetch("SELECT net_micros, tax_micros FROM invoice_lines"
                                 " WHERE offer = 'data-boost' ORDER BY coverage_start")
        shares = await conn.fetch("SELECT agreement, gross_micros, share_micros,"
                                  " operator_micros FROM partner_accruals")
        payable = await conn.fetchval("SELECT balance_micros FROM ledger_accounts"
                                      " WHERE account_id = 'partnerPayable:streamflix'")
    assert [(r["net_micros"], r["tax_micros"]) for r in boost] == [(4_190_000, 800_000)] * 2
    assert [(r["agreement"], r["gross_micros"], r["share_micros"], r["operator_micros"])
            for r in shares] == [("streamflix", 4_190_000, 1_257_000, 2_933_000)] * 2
    assert payable == 2_514_000
    assert await ledger_check(servers, tenant_name) == (0, 0)
    again = await bill_run(pool, tenant_name, period)  # billed once, shared once
    assert again.documents == 0
