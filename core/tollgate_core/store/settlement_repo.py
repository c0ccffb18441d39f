"""Partner settlement rows: accruals, running monthly gross of tiered agreements, statements
and the network API calls they settle.

Writes made while rating are bulk statements (unnest), one per table per batch, like
:mod:`rating_repo`; statement runs take one transaction per (agreement, period).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from tollgate_core.domain.ledger import AccountKind
from tollgate_core.domain.settlement import ApiCharges, ApiLine, Period, Totals
from tollgate_core.store.db import Connection

GrossKey = tuple[str, date]
"""(agreement, first day of the month in the tenant's timezone)"""


@dataclass(frozen=True, slots=True)
class AccrualRow:
    event_id: uuid.UUID
    agreement: str
    partner_id: str
    catalog_revision: int
    event_time: datetime
    local_day: date
    units: int
    gross_micros: int
    share_micros: int
    operator_micros: int
    currency: str


async def ensure_payable_accounts(conn: Connection, tenant: str, accounts: Sequence[str],
                                  currency: str) -> None:
    """Create partner payable accounts on first use (in id order; existing ones untouched)."""
    if not accounts:
        return
    await conn.execute(
        "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
        " SELECT $1, a, $2, $3 FROM unnest($4::text[]) AS a ORDER BY a ON CONFLICT DO NOTHING",
        tenant, AccountKind.PARTNER_PAYABLE.value, currency, sorted(set(accounts)))


async def lock_gross(conn: Connection, tenant: str,
                     keys: Sequence[GrossKey]) -> dict[GrossKey, int]:
    """Create missing month rows and lock all of them in key order; return their gross."""
    if not keys:
        return {}
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        "INSERT INTO partner_gross (tenant_id, agreement, month)"
        " SELECT $1, * FROM unnest($2::text[], $3::date[]) ORDER BY 1, 2"
        " ON CONFLICT (tenant_id, agreement, month)"
        " DO UPDATE SET gross_micros = partner_gross.gross_micros"
        " RETURNING agreement, month, gross_micros",
        tenant, [k[0] for k in ordered], [k[1] for k in ordered])
    return {(r["agreement"], r["month"]): r["gross_micros"] for r in rows}


async def save_gross(conn: Connection, gross: dict[GrossKey, int]) -> None:
    if not gross:
        return
    keys = sorted(gross)
    await conn.execute(
        "UPDATE partner_gross g SET gross_micros = k.g FROM unnest($1::text[], $2::date[],"
        " $3::bigint[]) AS k(a, m, g) WHERE g.agreement = k.a AND g.month = k.m",
        [k[0] for k in keys], [k[1] for k in keys], [gross[k] for k in keys])


async def insert_accruals(conn: Connection, tenant: str, rows: Sequence[AccrualRow]) -> None:
    if not rows:
        return
    await conn.execute(
        "INSERT INTO partner_accruals (tenant_id, event_id, agreement, partner_id,"
        " catalog_revision, event_time, local_day, units, gross_micros, share_micros,"
        " operator_micros, currency) SELECT $1, * FROM unnest($2::uuid[], $3::text[],"
        " $4::text[], $5::int[], $6::timestamptz[], $7::date[], $8::bigint[], $9::bigint[],"
        " $10::bigint[], $11::bigint[], $12::text[])",
        tenant, [r.event_id for r in rows], [r.agreement for r in rows],
        [r.partner_id for r in rows], [r.catalog_revision for r in rows],
        [r.event_time for r in rows], [r.local_day for r in rows], [r.units for r in rows],
        [r.gross_micros for r in rows], [r.share_micros for r in rows],
        [r.operator_micros for r in rows], [r.currency for r in rows])


# --- statements -----------------------------------------------------------------------------


async def lock_agreement(conn: Connection, tenant: str, agreement: str) -> None:
    """Serialise statement runs of one agreement (transaction-scoped advisory lock)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"tollgate-settlement/{tenant}/{agreement}")


async def find_statement(conn: Connection, agreement: str,
                         period: Period) -> dict[str, Any] | None:
    """The stored document of the agreement's statement for `period`, if issued."""
    body = await conn.fetchval(
        "SELECT body FROM settlement_statements WHERE agreement = $1"
        " AND period = $2 AND period_start = $3", agreement, period.kind.value, period.start)
    return None if body is None else dict(body)


async def open_agreements(conn: Connection, before: date) -> list[str]:
    """Agreements with accruals not yet on a statement, dated before `before`."""
    rows = await conn.fetch(
        "SELECT DISTINCT agreement FROM partner_accruals WHERE statement_id IS NULL"
        " AND local_day < $1 ORDER BY agreement", before)
    return [r["agreement"] for r in rows]


async def claim_accruals(conn: Connection, agreement: str, period: Period,
                         statement: uuid.UUID) -> Totals:
    """Put on `statement` the open accruals of the period, and those of earlier periods that
    already have a statement (late usage); those of earlier periods without one wait for it.
    One statement, so the totals are exactly the rows claimed."""
    row = await conn.fetchrow(
        "WITH claimed AS ("
        " UPDATE partner_accruals a SET statement_id = $4"
        " WHERE a.agreement = $1 AND a.statement_id IS NULL AND a.local_day < $3"
        " AND (a.local_day >= $2 OR EXISTS (SELECT 1 FROM settlement_statements s"
        "  WHERE s.agreement = a.agreement AND s.period_start <= a.local_day"
        "  AND a.local_day < s.period_end))"
        " RETURNING a.local_day, a.gross_micros, a.share_micros)"
        " SELECT count(*) AS records, coalesce(sum(gross_micros), 0) AS gross,"
        " coalesce(sum(share_micros), 0) AS share,"
        " count(*) FILTER (WHERE local_day < $2) AS carried,"
        " coalesce(sum(share_micros) FILTER (WHERE local_day < $2), 0) AS carried_share"
        " FROM claimed", agreement, period.start, period.end, statement)
    assert row is not None
    return Totals(int(row["records"]), int(row["gross"]), int(row["share"]),
                  int(row["carried"]), int(row["carried_share"]))


async def claim_calls(conn: Connection, agreement: str, period: Period, timezone: str,
                      statement: uuid.UUID) -> tuple[ApiCharges, set[str]]:
    """Put on `statement` the agreement's open network API calls of the period, and late
    ones of earlier periods that already have a statement (the rule of `claim_accruals`;
    a call's period is its local day in `timezone`). Returns the charges per API and the
    currencies they were booked in."""
    start, end = period.bounds(timezone)
    rows = await conn.fetch(
        "WITH claimed AS ("
        " UPDATE network_api_calls c SET statement_id = $4"
        " WHERE c.agreement = $1 AND c.statement_id IS NULL AND c.called_at < $3"
        " AND (c.called_at >= $2 OR EXISTS (SELECT 1 FROM settlement_statements s"
        "  WHERE s.agreement = c.agreement"
        "  AND s.period_start <= (c.called_at AT TIME ZONE $5)::date"
        "  AND (c.called_at AT TIME ZONE $5)::date < s.period_end))"
        " RETURNING c.api, c.currency, c.price_micros, c.called_at)"
        " SELECT api, currency, count(*) AS calls,"
        " coalesce(sum(price_micros), 0)::bigint AS charge,"
        " count(*) FILTER (WHERE called_at < $2) AS carried,"
        " coalesce(sum(price_micros) FILTER (WHERE called_at < $2), 0)::bigint AS carried_charge"
        " FROM claimed GROUP BY api, currency ORDER BY api, currency",
        agreement, start, end, statement, timezone)
    lines = tuple(ApiLine(r["api"], int(r["calls"]), int(r["charge"])) for r in rows)
    return (ApiCharges(lines, sum(int(r["carried"]) for r in rows),
                       sum(int(r["carried_charge"]) for r in rows)),
            {r["currency"].strip() for r in rows})


@dataclass(frozen=True, slots=True)
class StatementRow:
    statement_id: uuid.UUID
    agreement: str
    partner_id: str
    period: Period
    catalog_revision: int
    currency: str
    settlement_currency: str
    fx_rate: str | None
    records: int
    gross_micros: int
    share_micros: int
    adjustment_micros: int
    adjustment_kind: str | None
    payable_micros: int
    settled_gross_micros: int
    settled_share_micros: int
    settled_payable_micros: int
    body: dict[str, Any]
    issued_at: datetime
    network_api_calls: int = 0
    network_api_micros: int = 0
    settled_network_api_micros: int = 0


async def insert_statement(conn: Connection, tenant: str, s: StatementRow) -> None:
    await conn.execute(
        "INSERT INTO settlement_statements (tenant_id, statement_id, agreement, partner_id,"
        " period, period_start, period_end, catalog_revision, currency, settlement_currency,"
        " fx_rate, records, gross_micros, share_micros, adjustment_micros, adjustment_kind,"
        " payable_micros, settled_gross_micros, settled_share_micros, settled_payable_micros,"
        " body, issued_at, network_api_calls, network_api_micros, settled_network_api_micros)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,"
        " $18, $19, $20, $21, $22, $23, $24, $25)",
        tenant, s.statement_id, s.agreement, s.partner_id, s.period.kind.value, s.period.start,
        s.period.end, s.catalog_revision, s.currency, s.settlement_currency, s.fx_rate,
        s.records, s.gross_micros, s.share_micros, s.adjustment_micros, s.adjustment_kind,
        s.payable_micros, s.settled_gross_micros, s.settled_share_micros,
        s.settled_payable_micros, s.body, s.issued_at, s.network_api_calls,
        s.network_api_micros, s.settled_network_api_micros)


async def statements(conn: Connection, *, agreement: str | None = None,
                     period_start: date | None = None,
                     period_end: date | None = None) -> list[dict[str, Any]]:
    """Stored statement documents, by period then agreement; optionally those of one
    agreement and/or those whose period lies within [period_start, period_end)."""
    rows = await conn.fetch(
        "SELECT body FROM settlement_statements WHERE ($1::text IS NULL OR agreement = $1)"
        " AND ($2::date IS NULL OR period_start >= $2)"
        " AND ($3::date IS NULL OR period_end <= $3)"
        " ORDER BY period_start, agreement, period", agreement, period_start, period_end)
    return [dict(r["body"]) for r in rows]


@dataclass(frozen=True, slots=True)
class StatementSummary:
    """A stored statement's figures, as the partner API shows them."""

    statement_id: uuid.UUID
    agreement: str
    period: str
    period_start: date
    period_end: date
    catalog_revision: int
    currency: str
    settlement_currency: str
    fx_rate: str | None
    records: int
    gross_micros: int
    share_micros: int
    adjustment_micros: int
    adjustment_kind: str | None
    payable_micros: int
    network_api_calls: int
    network_api_micros: int
    net_micros: int
    settled_payable_micros: int
    settled_network_api_micros: int
    settled_net_micros: int
    issued_at: datetime


async def statement_page(conn: Connection, agreement: str, limit: int,
                         after: tuple[datetime, uuid.UUID] | None) -> list[StatementSummary]:
    """The agreement's statements, newest issued first, after an (issued_at, id) position."""
    args: list[Any] = [agreement, limit]
    position = ""
    if after is not None:
        position = " AND (issued_at, statement_id) < ($3, $4)"
        args.extend(after)
    rows = await conn.fetch(
        "SELECT statement_id, agreement, period, period_start, period_end, catalog_revision,"
        " currency, settlement_currency, fx_rate, records, gross_micros, share_micros,"
        " adjustment_micros, adjustment_kind, payable_micros, network_api_calls,"
        " network_api_micros, net_micros, settled_payable_micros,"
        " settled_network_api_micros, settled_net_micros, issued_at"
        " FROM settlement_statements WHERE agreement = $1" + position +
        " ORDER BY issued_at DESC, statement_id DESC LIMIT $2", *args)
    return [StatementSummary(**{k: (v.strip() if k in ("currency", "settlement_currency")
                                    else v) for k, v in dict(r).items()}) for r in rows]
