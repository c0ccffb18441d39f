"""Network API calls, their counters and QoD sessions (migration 0006, ADR 0015).

Lock order of a metered call: the call's advisory lock (repeats of one idempotency key
serialise), the month counter of (agreement, API), its rate window, then the ledger accounts
(`post_transfers`, in key order).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from tollgate_core.domain.ledger import AccountKind
from tollgate_core.domain.network_api import NETWORK_API_REVENUE, partner_receivable_account
from tollgate_core.resources.partner import PartnerAgreementSpec
from tollgate_core.store.db import Connection
from tollgate_core.store.queries import Keyset


@dataclass(frozen=True, slots=True)
class AgreementTerms:
    """What a call needs of the latest catalog revision: one agreement and the tenant's
    currency and timezone."""

    revision: int
    currency: str
    timezone: str
    spec: PartnerAgreementSpec | None


async def latest_terms(conn: Connection, agreement: str) -> AgreementTerms | None:
    """Only the agreement's part of the latest revision is read and parsed."""
    row = await conn.fetchrow(
        "SELECT revision, body->'tenant'->>'currency' AS currency,"
        " body->'tenant'->>'timezone' AS timezone, body->'partners'->$1 AS spec"
        " FROM catalog_revisions WHERE tenant_id = current_setting('tollgate.tenant')"
        " ORDER BY revision DESC LIMIT 1", agreement)
    if row is None:
        return None
    spec = None if row["spec"] is None else PartnerAgreementSpec.model_validate(row["spec"])
    return AgreementTerms(row["revision"], row["currency"], row["timezone"] or "UTC", spec)


async def lock_call(conn: Connection, call_id: uuid.UUID) -> None:
    """Repeats of one call (the same idempotency key) wait for each other."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", str(call_id))


@dataclass(frozen=True, slots=True)
class StoredCall:
    call_id: uuid.UUID
    request_digest: str
    called_at: datetime
    price_micros: int
    currency: str
    session_id: uuid.UUID | None


async def find_call(conn: Connection, call_id: uuid.UUID) -> StoredCall | None:
    row = await conn.fetchrow(
        "SELECT c.call_id, c.request_digest, c.called_at, c.price_micros, c.currency,"
        " s.session_id FROM network_api_calls c LEFT JOIN qod_sessions s"
        " ON s.tenant_id = c.tenant_id AND s.call_id = c.call_id WHERE c.call_id = $1",
        call_id)
    return None if row is None else StoredCall(**dict(row))


async def count_month(conn: Connection, tenant: str, agreement: str, api: str, month: date,
                      quota: int | None) -> int | None:
    """Count one call of the month unless the quota is used up: the month's calls now, or
    None when refused. The row stays locked until the transaction ends."""
    calls: int | None = await conn.fetchval(
        "INSERT INTO network_api_meters AS m (tenant_id, agreement, api, month, calls)"
        " VALUES ($1, $2, $3, $4, 1) ON CONFLICT (tenant_id, agreement, api, month)"
        " DO UPDATE SET calls = m.calls + 1 WHERE $5::bigint IS NULL OR m.calls < $5"
        " RETURNING calls", tenant, agreement, api, month, quota)
    return calls


async def count_second(conn: Connection, tenant: str, agreement: str, api: str,
                       window: datetime, limit: int) -> int | None:
    """Count one call of the one-second window unless `limit` calls are in it already.

    The window only moves forward: a replica whose clock is behind counts into the
    current window instead of reopening an older one."""
    calls: int | None = await conn.fetchval(
        "INSERT INTO network_api_windows AS w (tenant_id, agreement, api, window_start, calls)"
        " VALUES ($1, $2, $3, $4, 1) ON CONFLICT (tenant_id, agreement, api) DO UPDATE SET"
        " window_start = GREATEST(w.window_start, EXCLUDED.window_start),"
        " calls = CASE WHEN EXCLUDED.window_start > w.window_start THEN 1 ELSE w.calls + 1 END"
        " WHERE EXCLUDED.window_start > w.window_start OR w.calls < $5"
        " RETURNING calls", tenant, agreement, api, window, limit)
    return calls


async def ensure_accounts(conn: Connection, tenant: str, agreement: str, currency: str) -> None:
    await conn.execute(
        "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
        " VALUES ($1, $2, $3, $5), ($1, $4, $6, $5) ON CONFLICT DO NOTHING",
        tenant, partner_receivable_account(agreement), AccountKind.RECEIVABLE.value,
        NETWORK_API_REVENUE, currency, AccountKind.REVENUE.value)


@dataclass(frozen=True, slots=True)
class CallRow:
    call_id: uuid.UUID
    agreement: str
    api: str
    operation: str
    idempotency_key: str
    request_digest: str
    called_at: datetime
    local_month: date
    price_micros: int
    currency: str
    catalog_revision: int
    month_call: int
    """The call's number in its month, from 0 (it picked the price tier)."""


async def insert_call(conn: Connection, tenant: str, call: CallRow) -> None:
    await conn.execute(
        "INSERT INTO network_api_calls (tenant_id, call_id, agreement, api, operation,"
        " idempotency_key, request_digest, called_at, local_month, price_micros, currency,"
        " catalog_revision, month_call)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        tenant, call.call_id, call.agreement, call.api, call.operation, call.idempotency_key,
        call.request_digest, call.called_at, call.local_month, call.price_micros,
        call.currency, call.catalog_revision, call.month_call)


async def insert_qod_session(conn: Connection, tenant: str, session_id: uuid.UUID,
                             call_id: uuid.UUID, agreement: str, msisdn: str, profile: str,
                             duration_seconds: int, requested_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO qod_sessions (tenant_id, session_id, call_id, agreement, msisdn, profile,"
        " duration_seconds, status, requested_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, 'requested', $8)",
        tenant, session_id, call_id, agreement, msisdn, profile, duration_seconds, requested_at)


@dataclass(frozen=True, slots=True)
class UsageLine:
    api: str
    currency: str
    calls: int
    charge_micros: int


async def usage_lines(conn: Connection, agreement: str, start: datetime,
                      end: datetime) -> list[UsageLine]:
    """Calls and charges per API (and currency) in [start, end)."""
    rows = await conn.fetch(
        "SELECT api, currency, count(*) AS calls, coalesce(sum(price_micros), 0)::bigint"
        " AS charge_micros FROM network_api_calls WHERE agreement = $1 AND called_at >= $2"
        " AND called_at < $3 GROUP BY api, currency ORDER BY api, currency",
        agreement, start, end)
    return [UsageLine(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: uuid.UUID
    api: str
    operation: str
    called_at: datetime
    price_micros: int
    currency: str
    catalog_revision: int
    session_id: uuid.UUID | None
    month_call: int | None
    statement_id: uuid.UUID | None


async def call_page(conn: Connection, agreement: str, start: datetime, end: datetime,
                    limit: int, after: Keyset | None) -> list[CallRecord]:
    """Calls in [start, end), newest first, after a (called_at, call_id) position."""
    args: list[Any] = [agreement, start, end, limit]
    position = ""
    if after is not None:
        position = " AND (c.called_at, c.call_id) < ($5, $6)"
        args.extend(after)
    rows = await conn.fetch(
        "SELECT c.call_id, c.api, c.operation, c.called_at, c.price_micros, c.currency,"
        " c.catalog_revision, s.session_id, c.month_call, c.statement_id"
        " FROM network_api_calls c LEFT JOIN qod_sessions s"
        " ON s.tenant_id = c.tenant_id AND s.call_id = c.call_id"
        " WHERE c.agreement = $1 AND c.called_at >= $2 AND c.called_at < $3" + position +
        " ORDER BY c.called_at DESC, c.call_id DESC LIMIT $4", *args)
    return [CallRecord(**dict(r)) for r in rows]

