"""Test data for assurance: transfers through the real write path, rated usage in bulk."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.factories import install_example_catalog
from tollgate_core.domain.ledger import (
    TOP_UP_FUNDING_ACCOUNT,
    Transfer,
    TransferCode,
    revenue_account,
    transfer_id,
)
from tollgate_core.store import rating_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx


async def post_transfers(pool: Pool, tenant: str, count: int, *, start: int = 0,
                         batch: int = 500) -> list[uuid.UUID]:
    """`count` transfers through the charging engine's write path, in batches."""
    ids: list[uuid.UUID] = []
    for first in range(start, start + count, batch):
        transfers = [Transfer(transfer_id(f"test-{tenant}-{i}", "charge"),
                              TOP_UP_FUNDING_ACCOUNT, revenue_account("usage"),
                              1_000 + i, "EUR", TransferCode.USAGE, f"test-{i}")
                     for i in range(first, min(first + batch, start + count))]
        async with tenant_tx(pool, tenant) as conn:
            await rating_repo.post_transfers(conn, tenant, transfers)
        ids.extend(t.id for t in transfers)
    return ids


@asynccontextmanager
async def owner(owner_dsn: str) -> AsyncIterator[Connection]:
    """A superuser connection, for tampering as an attacker with database access would."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@dataclass(frozen=True)
class Population:
    revision: int
    customers: list[uuid.UUID]
    subscriptions: list[uuid.UUID]
    subscribers: list[str]


async def populate(pool: Pool, tenant: str, lines: int) -> Population:
    """The example catalog and `lines` postpaid customers with one subscription each, written
    directly (the ordering path is tested elsewhere; here only their rows matter)."""
    revision = await install_example_catalog(pool, tenant)
    customers = [uuid.uuid4() for _ in range(lines)]
    subscriptions = [uuid.uuid4() for _ in range(lines)]
    subscribers = [f"4917{i:08d}" for i in range(lines)]
    started = datetime(2026, 1, 1, tzinfo=UTC)
    async with tenant_tx(pool, tenant) as conn:
        await conn.execute(
            "INSERT INTO customers (tenant_id, customer_id, payment_type)"
            " SELECT $1, c, 'postpaid' FROM unnest($2::uuid[]) AS c", tenant, customers)
        await conn.execute(
            "INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, offer,"
            " subscriber, status, catalog_revision, started_at) SELECT $1, s, c, 'mobile-m',"
            " l, 'active', $5, $6 FROM unnest($2::uuid[], $3::uuid[], $4::text[]) AS k(s, c, l)",
            tenant, subscriptions, customers, subscribers, revision, started)
    return Population(revision, customers, subscriptions, subscribers)


async def copy_rated_usage(pool: Pool, tenant: str, population: Population, count: int,
                           period_start: datetime, period: timedelta, seed: int) -> None:
    """`count` rated records spread over the period, inserted with COPY.

    COPY is refused on tables with row-level security, so the rows go into a temporary table
    first and from there into rated_usage with one INSERT … SELECT (RLS checked)."""
    rng = random.Random(seed)
    span = period // timedelta(microseconds=1)
    services = [("data", 1_048_576, 10_000), ("voice", 60, 90_000), ("sms", 1, 90_000)]
    rows = []
    for _ in range(count):
        line = rng.randrange(len(population.customers))
        service, unit, price = services[rng.randrange(len(services))]
        quantity = rng.randrange(1, 50) * unit
        allowance = quantity if rng.random() < 0.2 else 0
        # prices in micro-units that rarely fall on a cent: exercises minor-unit rounding
        amount = 0 if allowance else (quantity // unit) * price + rng.randrange(0, 10_000)
        start = period_start + timedelta(microseconds=rng.randrange(span))
        rows.append((uuid.UUID(int=rng.getrandbits(128), version=4),
                     population.subscriptions[line], population.customers[line], service,
                     quantity, allowance, quantity - allowance, amount, "EUR", None,
                     population.revision, start))
    async with tenant_tx(pool, tenant) as conn:
        await conn.execute(
            "CREATE TEMP TABLE rated_load (event_id uuid, subscription_id uuid, customer_id uuid,"
            " service text, quantity bigint, allowance_units bigint, chargeable_units bigint,"
            " amount_micros bigint, currency char(3), price_name text, catalog_revision int,"
            " start_time timestamptz) ON COMMIT DROP")
        await conn.copy_records_to_table("rated_load", records=rows)
        await conn.execute(
            "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id, service,"
            " quantity, allowance_units, chargeable_units, amount_micros, currency, price_name,"
            " catalog_revision, start_time) SELECT $1, * FROM rated_load", tenant)
