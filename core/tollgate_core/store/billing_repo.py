"""Reads and writes of bill runs, invoices, payments and credit notes (bulk, one round trip
per statement for a whole batch of accounts)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from tollgate_core.domain.billing import (
    Bill,
    ChargedKey,
    DocumentKind,
    SubscriptionTerms,
    UsageTotal,
    local_date,
)
from tollgate_core.store.db import Connection


@dataclass(frozen=True, slots=True)
class AccountToBill:
    customer_id: uuid.UUID
    payment_type: str
    timezone: str | None = None
    """The account's own IANA timezone; None: the tenant's."""


TENANT_ZONE = ""
"""The zone key of accounts that bill in the tenant's timezone (`customers.timezone` NULL)."""


async def accounts_to_bill(conn: Connection, period_start: date, after: uuid.UUID | None,
                           limit: int, share: tuple[int, int] = (0, 1),
                           zones: Sequence[str] | None = None) -> list[AccountToBill]:
    """The next accounts (in id order) with no document for the period yet; `share` (k, n)
    keeps the k-th of n disjoint slices of the accounts (one per bill-run worker); `zones`,
    when given, keeps the accounts billing in those timezones (`TENANT_ZONE`: the tenant's)."""
    rows = await conn.fetch(
        "SELECT c.customer_id, c.payment_type, c.timezone FROM customers c"
        " WHERE ($1::uuid IS NULL OR c.customer_id > $1)"
        " AND get_byte(uuid_send(c.customer_id), 15) % $5 = $4"
        " AND ($6::text[] IS NULL OR coalesce(c.timezone, '') = ANY($6::text[]))"
        " AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.customer_id = c.customer_id"
        "                 AND i.period_start = $2)"
        " ORDER BY c.customer_id LIMIT $3", after, period_start, limit, share[0], share[1],
        None if zones is None else list(zones))
    return [AccountToBill(r["customer_id"], r["payment_type"], r["timezone"]) for r in rows]


async def account_timezones(conn: Connection) -> list[str]:
    """The timezones accounts of the tenant bill in besides the tenant's own."""
    rows = await conn.fetch(
        "SELECT DISTINCT timezone FROM customers WHERE timezone IS NOT NULL ORDER BY 1")
    return [r["timezone"] for r in rows]


async def first_run_start(conn: Connection) -> date | None:
    """The first day of the earliest period the tenant ever ran a bill run for."""
    first: date | None = await conn.fetchval("SELECT min(period_start) FROM bill_runs")
    return first


async def subscriptions(conn: Connection, customer_ids: Sequence[uuid.UUID], until: datetime,
                        since: datetime, timezones: Mapping[uuid.UUID, str]
                        ) -> dict[uuid.UUID, list[SubscriptionTerms]]:
    """Subscriptions in service at some time in [since, until), their start and end as local
    days of their account's timezone."""
    rows = await conn.fetch(
        "SELECT subscription_id, customer_id, offer, catalog_revision, started_at, ended_at"
        " FROM subscriptions WHERE customer_id = ANY($1::uuid[]) AND started_at < $2"
        " AND (ended_at IS NULL OR ended_at > $3)", customer_ids, until, since)
    out: dict[uuid.UUID, list[SubscriptionTerms]] = {}
    for r in rows:
        timezone = timezones[r["customer_id"]]
        out.setdefault(r["customer_id"], []).append(SubscriptionTerms(
            r["subscription_id"], r["offer"], r["catalog_revision"],
            local_date(r["started_at"], timezone),
            local_date(r["ended_at"], timezone) if r["ended_at"] else None))
    return out


async def charged(conn: Connection, subscription_ids: Sequence[uuid.UUID],
                  coverages: Sequence[date]) -> dict[ChargedKey, int]:
    """What earlier documents charged these subscriptions for the coverage periods, and
    their one-time fees."""
    rows = await conn.fetch(
        "SELECT subscription_id, CASE WHEN kind = 'oneTime' THEN 'oneTime' ELSE price_name END"
        " AS price, CASE WHEN kind = 'oneTime' THEN NULL ELSE coverage_start END AS coverage,"
        " sum(exact_micros)::bigint AS micros FROM invoice_lines"
        " WHERE subscription_id = ANY($1::uuid[]) AND (kind = 'oneTime'"
        "       OR (kind = 'recurring' AND coverage_start = ANY($2::date[])))"
        " GROUP BY 1, 2, 3", subscription_ids, coverages)
    return {(r["subscription_id"], r["price"], r["coverage"]): r["micros"] for r in rows}


async def usage(conn: Connection, customer_ids: Sequence[uuid.UUID], start: datetime,
                end: datetime, lookback: datetime) -> dict[uuid.UUID, list[UsageTotal]]:
    """Rated usage to bill: started in [start, end), plus records that started in
    [lookback, start) but were rated after the account's previous document was billed
    (late arrivals, which that document could not see). The bounds are one timezone's:
    accounts billing in different timezones are read one zone at a time."""
    rows = await conn.fetch(
        "WITH prev AS (SELECT customer_id, max(billed_at) AS billed_at FROM invoices"
        "              WHERE customer_id = ANY($1::uuid[]) GROUP BY customer_id)"
        " SELECT u.customer_id, u.subscription_id, u.service, coalesce(u.price_name, '')"
        " AS price_name, u.catalog_revision, sum(u.quantity)::bigint AS quantity,"
        " count(*) AS records, sum(u.amount_micros)::bigint AS micros"
        " FROM rated_usage u LEFT JOIN prev p ON p.customer_id = u.customer_id"
        " WHERE u.customer_id = ANY($1::uuid[]) AND u.start_time >= $4 AND u.start_time < $3"
        " AND (u.start_time >= $2 OR u.rated_at > coalesce(p.billed_at, '-infinity'))"
        " GROUP BY 1, 2, 3, 4, 5", customer_ids, start, end, lookback)
    out: dict[uuid.UUID, list[UsageTotal]] = {}
    for r in rows:
        out.setdefault(r["customer_id"], []).append(UsageTotal(
            r["subscription_id"], r["service"], r["price_name"], r["catalog_revision"],
            r["quantity"], r["records"], r["micros"]))
    return out


async def take_numbers(conn: Connection, tenant: str, series: str, count: int) -> int:
    """Reserve `count` consecutive numbers of a series in this transaction; the first."""
    first: int = await conn.fetchval(
        "INSERT INTO document_series AS s (tenant_id, series, next_number) VALUES ($1, $2, $3 + 1)"
        " ON CONFLICT (tenant_id, series) DO UPDATE SET next_number = s.next_number + $3"
        " RETURNING next_number - $3", tenant, series, count)
    return first


@dataclass(frozen=True, slots=True)
class Document:
    invoice_id: uuid.UUID
    kind: DocumentKind
    series: str
    number: int
    bill_no: str
    bill: Bill
    bill_date: date
    due_date: date | None
    state: str


async def insert_documents(conn: Connection, tenant: str, docs: Sequence[Document]) -> None:
    if not docs:
        return
    await conn.execute(
        "INSERT INTO invoices (tenant_id, invoice_id, kind, series, number, bill_no,"
        " customer_id, period_start, period_end, bill_date, due_date, currency, net_micros,"
        " tax_micros, total_micros, state) SELECT $1, * FROM unnest($2::uuid[], $3::text[],"
        " $4::text[], $5::bigint[], $6::text[], $7::uuid[], $8::date[], $9::date[],"
        " $10::date[], $11::date[], $12::text[], $13::bigint[], $14::bigint[], $15::bigint[],"
        " $16::text[])", tenant,
        [d.invoice_id for d in docs], [d.kind.value for d in docs], [d.series for d in docs],
        [d.number for d in docs], [d.bill_no for d in docs],
        [d.bill.customer_id for d in docs], [d.bill.period.start for d in docs],
        [d.bill.period.end for d in docs], [d.bill_date for d in docs],
        [d.due_date for d in docs], [d.bill.currency for d in docs],
        [d.bill.net_micros for d in docs], [d.bill.tax_micros for d in docs],
        [d.bill.total_micros for d in docs], [d.state for d in docs])
    lines = [(d.invoice_id, n, line) for d in docs for n, line in enumerate(d.bill.lines, 1)]
    if not lines:
        return
    await conn.execute(
        "INSERT INTO invoice_lines (tenant_id, invoice_id, line_no, kind, subscription_id,"
        " offer, price_name, catalog_revision, description, quantity, coverage_start,"
        " coverage_end, exact_micros, net_micros, tax_micros, tax_category, tax_rate,"
        " tax_inclusive) SELECT $1, * FROM unnest($2::uuid[], $3::int[], $4::text[],"
        " $5::uuid[], $6::text[], $7::text[], $8::int[], $9::text[], $10::bigint[],"
        " $11::date[], $12::date[], $13::bigint[], $14::bigint[], $15::bigint[], $16::text[],"
        " $17::text[], $18::bool[])", tenant,
        [i for i, _, _ in lines], [n for _, n, _ in lines], [ln.kind.value for _, _, ln in lines],
        [ln.subscription_id for _, _, ln in lines], [ln.offer for _, _, ln in lines],
        [ln.price_name for _, _, ln in lines], [ln.revision for _, _, ln in lines],
        [ln.description for _, _, ln in lines], [ln.quantity for _, _, ln in lines],
        [ln.coverage.start if ln.coverage else None for _, _, ln in lines],
        [ln.coverage.end if ln.coverage else None for _, _, ln in lines],
        [ln.exact_micros for _, _, ln in lines], [ln.net_micros for _, _, ln in lines],
        [ln.tax_micros for _, _, ln in lines], [ln.tax.category for _, _, ln in lines],
        [ln.tax.rate_text for _, _, ln in lines], [ln.tax.inclusive for _, _, ln in lines])


async def start_run(conn: Connection, tenant: str, start: date, end: date) -> None:
    await conn.execute(
        "INSERT INTO bill_runs (tenant_id, period_start, period_end) VALUES ($1, $2, $3)"
        " ON CONFLICT (tenant_id, period_start) DO UPDATE SET finished_at = NULL",
        tenant, start, end)


async def finish_run(conn: Connection, start: date) -> int:
    documents: int = await conn.fetchval(
        "UPDATE bill_runs r SET finished_at = now(), documents = (SELECT count(*) FROM invoices"
        " i WHERE i.period_start = r.period_start) WHERE period_start = $1"
        " RETURNING documents", start)
    return documents
