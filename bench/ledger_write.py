"""Ledger write path (transfers + balance updates through row-level security, as the
charging engine does it) vs a raw asyncpg COPY of the same rows into an unguarded table."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from bench.common import Env, analyze, environment, example_tenant, record
from tollgate_core.domain.ledger import Transfer, TransferCode, transfer_id
from tollgate_core.store import rating_repo
from tollgate_core.store.db import tenant_tx

TENANT = "bench"
ROWS = 100_000
BATCH = 500
ACCOUNTS = 1_000


async def setup_accounts(env: Env) -> list[str]:
    accounts = [f"customer:{uuid.UUID(int=i)}" for i in range(ACCOUNTS)]
    async with tenant_tx(env.pool, TENANT) as conn:
        await conn.executemany(
            "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
            " VALUES ($1, $2, 'customer', 'EUR')", [(TENANT, a) for a in accounts])
    return accounts


def transfers(accounts: list[str], start: int, count: int) -> list[Transfer]:
    return [Transfer(transfer_id(f"bench-{i}", "charge"), accounts[i % ACCOUNTS],
                     "revenue:usage", 1_000 + i % 997, "EUR", TransferCode.USAGE, f"bench-{i}")
            for i in range(start, start + count)]


async def ledger_path(env: Env, accounts: list[str]) -> float:
    started = time.perf_counter()
    for start in range(0, ROWS, BATCH):
        async with tenant_tx(env.pool, TENANT) as conn:
            await rating_repo.post_transfers(conn, TENANT, transfers(accounts, start, BATCH))
    return ROWS / (time.perf_counter() - started)


async def raw_copy(env: Env, accounts: list[str]) -> float:
    conn = await asyncpg.connect(env.owner_dsn)
    try:
        await conn.execute("CREATE TABLE copy_baseline (tenant_id text, transfer_id uuid"
                           " PRIMARY KEY, debit_account text, credit_account text,"
                           " amount_micros bigint, currency char(3), code text, cause_id text)")
        started = time.perf_counter()
        for start in range(0, ROWS, BATCH):
            rows = [(TENANT, t.id, t.debit_account, t.credit_account, t.amount_micros,
                     t.currency, t.code.value, t.cause_id)
                    for t in transfers(accounts, ROWS + start, BATCH)]
            async with conn.transaction():
                await conn.copy_records_to_table("copy_baseline", records=rows)
        return ROWS / (time.perf_counter() - started)
    finally:
        await conn.close()


async def main() -> None:
    async with environment() as env:
        await example_tenant(env.pool, TENANT)
        accounts = await setup_accounts(env)
        await analyze(env.owner_dsn)
        baseline = await raw_copy(env, accounts)
        ours = await ledger_path(env, accounts)
    record("Ledger write path", [
        f"{ROWS:,} transfers in transactions of {BATCH} over {ACCOUNTS:,} accounts.",
        "",
        "| figure | rows/s |",
        "| --- | --- |",
        f"| baseline: raw asyncpg COPY into an unguarded table | {baseline:,.0f} |",
        f"| Tollgate: transfers (idempotent ids, RLS, FKs) + balance updates | {ours:,.0f} |",
        f"| ratio | {ours / baseline:.2f} |",
    ])


if __name__ == "__main__":
    asyncio.run(main())
