"""Read models for the API, batched: each function answers for many customers in one
statement, so a GraphQL request costs the same number of round trips for one customer or a
page of them (the API's DataLoaders call these)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any

import asyncpg

from tollgate_core.domain.care import ConsentPurpose
from tollgate_core.domain.ledger import customer_account, overage_account
from tollgate_core.resources.tenant import TenantSpec
from tollgate_core.store.accounts_repo import (
    CUSTOMER_COLUMNS,
    SUBSCRIPTION_COLUMNS,
    CustomerRow,
    SubscriptionRow,
)
from tollgate_core.store.care_repo import CONSENT_COLUMNS, ORDER_COLUMNS, ConsentRow, OrderRow
from tollgate_core.store.db import Connection
from tollgate_core.store.rating_repo import RatedRow

Keyset = tuple[datetime, uuid.UUID]
"""Position in a newest-first list: (time, id) of the last row seen."""


@dataclass(frozen=True, slots=True)
class PageKey:
    """One page of one customer's list: at most `limit` rows older than `before`."""

    owner: uuid.UUID
    limit: int
    before: Keyset | None = None


@dataclass(frozen=True, slots=True)
class InvoicePageKey:
    """One page of one customer's invoices: at most `limit` older than `before`, a
    (period start, invoice id) position (a customer has one document per period)."""

    owner: uuid.UUID
    limit: int
    before: tuple[date, uuid.UUID] | None = None


@dataclass(frozen=True, slots=True)
class BalanceRow:
    balance_micros: int
    owed_micros: int
    currency: str


@dataclass(frozen=True, slots=True)
class AllowanceRow:
    subscription_id: uuid.UUID
    allowance: str
    period_start: date
    quantity: int
    used: int


@dataclass(frozen=True, slots=True)
class ConsentState:
    marketing: bool | None
    data_processing: bool | None
    updated_at: datetime | None


async def customers(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, CustomerRow]:
    rows = await conn.fetch(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = ANY($1::uuid[])",
        list(ids))
    return {r["customer_id"]: CustomerRow(**dict(r)) for r in rows}


async def customer_page(conn: Connection, limit: int,
                        before: Keyset | None = None) -> list[CustomerRow]:
    """Newest customers first, keyset-paginated on (created_at, customer_id)."""
    rows = await conn.fetch(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE $2::timestamptz IS NULL"
        " OR (created_at, customer_id) < ($2, $3) ORDER BY created_at DESC, customer_id DESC"
        " LIMIT $1", limit, *(before or (None, None)))
    return [CustomerRow(**dict(r)) for r in rows]


async def subscriptions(conn: Connection, customer_ids: Sequence[uuid.UUID]
                        ) -> dict[uuid.UUID, list[SubscriptionRow]]:
    rows = await conn.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE customer_id = ANY($1::uuid[])"
        " ORDER BY started_at, subscription_id", list(customer_ids))
    found: dict[uuid.UUID, list[SubscriptionRow]] = {c: [] for c in customer_ids}
    for r in rows:
        found[r["customer_id"]].append(SubscriptionRow(**dict(r)))
    return found


async def balances(conn: Connection, customer_ids: Sequence[uuid.UUID]
                   ) -> dict[uuid.UUID, BalanceRow]:
    accounts = {customer_account(str(c)): c for c in customer_ids}
    overages = {overage_account(str(c)): c for c in customer_ids}
    rows = await conn.fetch(
        "SELECT account_id, balance_micros, currency FROM ledger_accounts"
        " WHERE account_id = ANY($1::text[])", [*accounts, *overages])
    by_id = {r["account_id"]: r for r in rows}
    found = {}
    for account, customer in accounts.items():
        main = by_id.get(account)
        if main is None:
            continue
        overage = by_id.get(overage_account(str(customer)))
        found[customer] = BalanceRow(main["balance_micros"],
                                     -(overage["balance_micros"] if overage else 0),
                                     main["currency"].strip())
    return found


async def current_allowances(conn: Connection, customer_ids: Sequence[uuid.UUID]
                             ) -> dict[uuid.UUID, list[AllowanceRow]]:
    """The latest period of every allowance of the customers' active subscriptions."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (a.subscription_id, a.allowance) s.customer_id, a.subscription_id,"
        " a.allowance, a.period_start, a.quantity, a.used FROM allowance_usage a"
        " JOIN subscriptions s USING (tenant_id, subscription_id)"
        " WHERE s.customer_id = ANY($1::uuid[]) AND s.status = 'active'"
        " ORDER BY a.subscription_id, a.allowance, a.period_start DESC", list(customer_ids))
    found: dict[uuid.UUID, list[AllowanceRow]] = {c: [] for c in customer_ids}
    for r in rows:
        values = dict(r)
        found[values.pop("customer_id")].append(AllowanceRow(**values))
    return found


def _pages_sql(table: str, columns: str, time_column: str, id_column: str) -> str:
    """Up to `lim` rows per owner, newest first, older than the owner's keyset: one LATERAL
    index scan per owner in a single statement."""
    return (
        f"SELECT k.n AS page_no, r.* FROM unnest($1::uuid[], $2::int[], $3::timestamptz[],"
        f" $4::uuid[]) WITH ORDINALITY AS k(owner, lim, b_time, b_id, n)"
        f" CROSS JOIN LATERAL (SELECT {columns} FROM {table} WHERE customer_id = k.owner"
        f"  AND {time_column} <= coalesce(k.b_time, 'infinity')"
        f"  AND (k.b_time IS NULL OR ({time_column}, {id_column}) < (k.b_time, k.b_id))"
        f"  ORDER BY {time_column} DESC, {id_column} DESC LIMIT k.lim) r"
        f" ORDER BY k.n, r.{time_column} DESC, r.{id_column} DESC")


async def _page_records(conn: Connection, sql: str,
                        pages: Sequence[PageKey | InvoicePageKey]) -> list[list[asyncpg.Record]]:
    """Each page's rows as they come: `page_no`, then the table's columns."""
    rows = await conn.fetch(
        sql, [p.owner for p in pages], [p.limit for p in pages],
        [p.before[0] if p.before else None for p in pages],
        [p.before[1] if p.before else None for p in pages])
    found: list[list[asyncpg.Record]] = [[] for _ in pages]
    for r in rows:
        found[r[0] - 1].append(r)
    return found


async def _pages(conn: Connection, sql: str, pages: Sequence[PageKey | InvoicePageKey]
                 ) -> list[list[dict[str, Any]]]:
    found: list[list[dict[str, Any]]] = []
    for page in await _page_records(conn, sql, pages):
        rows = []
        for r in page:
            values = dict(r)
            del values["page_no"]
            rows.append(values)
        found.append(rows)
    return found


RATED_COLUMNS = ("event_id, subscription_id, customer_id, service, quantity, allowance_units,"
                 " chargeable_units, amount_micros, currency, price_name, catalog_revision,"
                 " start_time, price_factors")
_RATED_PAGES = _pages_sql("rated_usage", RATED_COLUMNS, "start_time", "event_id")
assert [c.strip() for c in RATED_COLUMNS.split(",")] == [f.name for f in fields(RatedRow)], (
    "rated_usage builds RatedRow by position")
_ORDER_PAGES = _pages_sql("orders", ORDER_COLUMNS, "created_at", "order_id")
_CONSENT_PAGES = _pages_sql("consent_records", CONSENT_COLUMNS, "recorded_at", "record_id")


async def rated_usage(conn: Connection, pages: Sequence[PageKey]) -> list[list[RatedRow]]:
    """Rated records per page request, newest first, keyset on (start_time, event_id)."""
    # By position (RATED_COLUMNS is RatedRow's order): a page of usage is the dashboard's
    # biggest read, and keyword construction from dict copies cost more than the query.
    return [[RatedRow(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9].strip(), r[10],
                      r[11], r[12], r[13]) for r in page]
            for page in await _page_records(conn, _RATED_PAGES, pages)]


async def orders(conn: Connection, pages: Sequence[PageKey]) -> list[list[OrderRow]]:
    return [[OrderRow(**r) for r in page] for page in await _pages(conn, _ORDER_PAGES, pages)]


async def consent_history(conn: Connection, pages: Sequence[PageKey]
                          ) -> list[list[ConsentRow]]:
    return [[ConsentRow(**r) for r in page]
            for page in await _pages(conn, _CONSENT_PAGES, pages)]


async def order_page(conn: Connection, limit: int,
                     before: Keyset | None = None) -> list[OrderRow]:
    """Every order of the tenant, newest first (agents)."""
    rows = await conn.fetch(
        f"SELECT {ORDER_COLUMNS} FROM orders WHERE $2::timestamptz IS NULL"
        " OR (created_at, order_id) < ($2, $3) ORDER BY created_at DESC, order_id DESC"
        " LIMIT $1", limit, *(before or (None, None)))
    return [OrderRow(**dict(r)) for r in rows]


async def consent_states(conn: Connection, customer_ids: Sequence[uuid.UUID]
                         ) -> dict[uuid.UUID, ConsentState]:
    """The latest decision per purpose (None: never asked)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (customer_id, purpose) customer_id, purpose, granted, recorded_at"
        " FROM consent_records WHERE customer_id = ANY($1::uuid[])"
        " ORDER BY customer_id, purpose, recorded_at DESC, record_id DESC", list(customer_ids))
    latest: dict[uuid.UUID, dict[str, tuple[bool, datetime]]] = {c: {} for c in customer_ids}
    for r in rows:
        latest[r["customer_id"]][r["purpose"]] = (r["granted"], r["recorded_at"])
    found = {}
    for customer, decisions in latest.items():
        marketing = decisions.get(ConsentPurpose.MARKETING.value)
        processing = decisions.get(ConsentPurpose.DATA_PROCESSING.value)
        times = [d[1] for d in decisions.values()]
        found[customer] = ConsentState(marketing[0] if marketing else None,
                                       processing[0] if processing else None,
                                       max(times) if times else None)
    return found


# ------------------------------------------------------------------ invoices and statements


@dataclass(frozen=True, slots=True)
class InvoiceRow:
    """An issued document's head; field names are the `invoices` columns (documents.to_html
    reads them by those names)."""

    invoice_id: uuid.UUID
    kind: str
    bill_no: str
    customer_id: uuid.UUID
    period_start: date
    period_end: date
    bill_date: date
    due_date: date | None
    currency: str
    net_micros: int
    tax_micros: int
    total_micros: int
    paid_micros: int
    credited_micros: int
    state: str


@dataclass(frozen=True, slots=True)
class InvoiceLineRow:
    invoice_id: uuid.UUID
    line_no: int
    kind: str
    subscription_id: uuid.UUID | None
    offer: str
    price_name: str
    catalog_revision: int
    description: str
    quantity: int
    coverage_start: date | None
    coverage_end: date | None
    exact_micros: int
    net_micros: int
    tax_micros: int
    tax_category: str
    tax_rate: str
    tax_inclusive: bool


INVOICE_COLUMNS = ("invoice_id, kind, bill_no, customer_id, period_start, period_end, bill_date,"
                   " due_date, currency, net_micros, tax_micros, total_micros, paid_micros,"
                   " credited_micros, state")
INVOICE_LINE_COLUMNS = ("invoice_id, line_no, kind, subscription_id, offer, price_name,"
                        " catalog_revision, description, quantity, coverage_start, coverage_end,"
                        " exact_micros, net_micros, tax_micros, tax_category, tax_rate,"
                        " tax_inclusive")
# Newest period first; (customer, period_start) is unique and indexed.
_INVOICE_PAGES = (
    f"SELECT k.n AS page_no, r.* FROM unnest($1::uuid[], $2::int[], $3::date[], $4::uuid[])"
    f" WITH ORDINALITY AS k(owner, lim, b_start, b_id, n)"
    f" CROSS JOIN LATERAL (SELECT {INVOICE_COLUMNS} FROM invoices WHERE customer_id = k.owner"
    f"  AND period_start <= coalesce(k.b_start, 'infinity')"
    f"  AND (k.b_start IS NULL OR (period_start, invoice_id) < (k.b_start, k.b_id))"
    f"  ORDER BY period_start DESC, invoice_id DESC LIMIT k.lim) r"
    f" ORDER BY k.n, r.period_start DESC, r.invoice_id DESC")


def _invoice(values: dict[str, Any]) -> InvoiceRow:
    return InvoiceRow(**{**values, "currency": values["currency"].strip()})


async def invoice_pages(conn: Connection, pages: Sequence[InvoicePageKey]
                        ) -> list[list[InvoiceRow]]:
    """Invoices and statements per page request, newest bill period first."""
    return [[_invoice(r) for r in page] for page in await _pages(conn, _INVOICE_PAGES, pages)]


async def invoices(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, InvoiceRow]:
    rows = await conn.fetch(
        f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE invoice_id = ANY($1::uuid[])", list(ids))
    return {r["invoice_id"]: _invoice(dict(r)) for r in rows}


async def invoice_lines(conn: Connection, invoice_ids: Sequence[uuid.UUID]
                        ) -> dict[uuid.UUID, list[InvoiceLineRow]]:
    """The lines of each document, in document order."""
    rows = await conn.fetch(
        f"SELECT {INVOICE_LINE_COLUMNS} FROM invoice_lines"
        " WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id, line_no", list(invoice_ids))
    found: dict[uuid.UUID, list[InvoiceLineRow]] = {i: [] for i in invoice_ids}
    for r in rows:
        found[r["invoice_id"]].append(InvoiceLineRow(**dict(r)))
    return found


async def tenant_specs(conn: Connection, tenants: Sequence[str]) -> dict[str, TenantSpec]:
    """The tenants' specs (row-level security shows the transaction's own only)."""
    rows = await conn.fetch("SELECT tenant_id, spec FROM tenants WHERE tenant_id = ANY($1)",
                            list(tenants))
    return {r["tenant_id"]: TenantSpec.model_validate(r["spec"]) for r in rows}
