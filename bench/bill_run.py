"""Bill run: invoices per second over 10k, 50k and 100k postpaid accounts with 100 rated
records each (10M at the largest), vs reading the same records with one SQL aggregate.

The accounts and records are generated in PostgreSQL directly (generate_series, interleaved
across customers as real traffic is) and vacuumed: rating them through NATS first would take
far longer than the bill run being measured. Set
BILL_RUN_ACCOUNTS=2000,4000 for a quick run."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.common import Env, analyze, environment, example_tenant, record
from tollgate_core.billing.run import bill_run, last_closed_period
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import tenant_tx

RECORDS_PER_ACCOUNT = 100
BATCH = 500


def scales() -> list[int]:
    return [int(n) for n in os.environ.get("BILL_RUN_ACCOUNTS", "10000,50000,100000").split(",")]


async def generate(env: Env, tenant: str, accounts: int, start: datetime) -> None:
    """Customers on mobile-m since before the period, and their rated usage in the period."""
    conn = await asyncpg.connect(env.owner_dsn)
    try:
        await conn.execute(
            "INSERT INTO customers (tenant_id, customer_id, name, email, payment_type)"
            " SELECT $1, gen_random_uuid(), 'C' || i, 'c' || i || '@example.de', 'postpaid'"
            " FROM generate_series(1, $2) i", tenant, accounts)
        await conn.execute(
            "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
            " SELECT $1, prefix || customer_id, kind, 'EUR' FROM customers,"
            " (VALUES ('customer:', 'customer'), ('receivable:', 'receivable')) k(prefix, kind)"
            " WHERE tenant_id = $1", tenant)
        await conn.execute(
            "INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, offer,"
            " subscriber, status, catalog_revision, started_at)"
            " SELECT $1, gen_random_uuid(), customer_id, 'mobile-m', 'line-' || customer_id,"
            " 'active', 1, $2 FROM customers WHERE tenant_id = $1", tenant,
            start - timedelta(days=40))
        await conn.execute(
            "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id, service,"
            " quantity, allowance_units, chargeable_units, amount_micros, currency, price_name,"
            " catalog_revision, start_time)"
            " SELECT $1, gen_random_uuid(), s.subscription_id, s.customer_id, 'data', 1048576,"
            " 0, 1048576, 1000 + (i * 7919) % 20000, 'EUR', 'data-payg', 1,"
            " $2::timestamptz + make_interval(mins => i * 7)"
            " FROM subscriptions s, generate_series(1, $3) i WHERE s.tenant_id = $1",
            tenant, start, RECORDS_PER_ACCOUNT)
    finally:
        await conn.close()


async def vacuum(env: Env) -> None:
    """A month-old period has been vacuumed by autovacuum (its pages all-visible), which is
    what lets the bill run read usage from the covering index alone; do it now."""
    conn = await asyncpg.connect(env.owner_dsn)
    try:
        await conn.execute("VACUUM ANALYZE rated_usage")
    finally:
        await conn.close()


async def aggregate_baseline(env: Env, tenant: str, start: datetime, end: datetime) -> float:
    """Seconds for one GROUP BY over the period's records (what a bill run must at least read)."""
    conn = await asyncpg.connect(env.owner_dsn)
    try:
        started = time.perf_counter()
        rows = await conn.fetch(
            "SELECT customer_id, subscription_id, service, price_name, catalog_revision,"
            " sum(quantity), count(*), sum(amount_micros) FROM rated_usage WHERE tenant_id = $1"
            " AND start_time >= $2 AND start_time < $3 GROUP BY 1, 2, 3, 4, 5",
            tenant, start, end)
        elapsed = time.perf_counter() - started
        assert rows
        return elapsed
    finally:
        await conn.close()


async def one_scale(env: Env, accounts: int) -> tuple[int, float, float, int]:
    tenant = f"bill{accounts}"
    await example_tenant(env.pool, tenant)
    async with tenant_tx(env.pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
    assert spec is not None
    period = last_closed_period(datetime.now(UTC), spec)
    start, end = period.instants(spec.timezone)
    await generate(env, tenant, accounts, start)
    await analyze(env.owner_dsn)
    await vacuum(env)
    baseline_s = await aggregate_baseline(env, tenant, start, end)
    result = await bill_run(env.pool, tenant, period, batch=BATCH)
    assert result.documents == accounts, result
    return accounts, result.seconds, baseline_s, accounts * RECORDS_PER_ACCOUNT


async def main() -> None:
    rows = []
    async with environment() as env:
        for accounts in scales():
            rows.append(await one_scale(env, accounts))
            print(f"bill run of {accounts:,} accounts: {rows[-1][1]:.1f} s")
    table = [
        f"Postpaid accounts on the example plan (monthly fee in advance, 19 % VAT included), "
        f"{RECORDS_PER_ACCOUNT} rated records each in the period; batches of {BATCH} accounts "
        "per transaction; one process.",
        "",
        "| accounts | rated records | bill run s | invoices/s | baseline: one SQL aggregate s "
        "| baseline accounts/s | ratio | s per 10k accounts |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for accounts, seconds, baseline_s, records in rows:
        table.append(
            f"| {accounts:,} | {records:,} | {seconds:.1f} | {accounts / seconds:,.0f} "
            f"| {baseline_s:.2f} | {accounts / baseline_s:,.0f} "
            f"| {baseline_s / seconds:.2f} | {seconds / accounts * 10_000:.2f} |")
    table += ["", "Goal: ≥ 1,500 invoices/s; linear: the last column stays flat."]
    record("Bill run", table)
