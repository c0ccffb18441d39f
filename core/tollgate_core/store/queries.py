"""Read models for the API: balances, allowances and rated usage of a customer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

from tollgate_core.domain.ledger import customer_account, overage_account
from tollgate_core.store.db import Connection
from tollgate_core.store.rating_repo import RatedRow


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


async def balance(conn: Connection, customer_id: uuid.UUID) -> BalanceRow | None:
    rows = await conn.fetch(
        "SELECT account_id, balance_micros, currency FROM ledger_accounts"
        " WHERE account_id = ANY($1::text[])",
        [customer_account(str(customer_id)), overage_account(str(customer_id))])
    by_id = {r["account_id"]: r for r in rows}
    main = by_id.get(customer_account(str(customer_id)))
    if main is None:
        return None
    overage = by_id.get(overage_account(str(customer_id)))
    return BalanceRow(main["balance_micros"], -(overage["balance_micros"] if overage else 0),
                      main["currency"].strip())


async def current_allowances(conn: Connection, customer_id: uuid.UUID) -> list[AllowanceRow]:
    """The latest period of every allowance of the customer's active subscriptions."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (a.subscription_id, a.allowance) a.subscription_id, a.allowance,"
        " a.period_start, a.quantity, a.used FROM allowance_usage a JOIN subscriptions s"
        " USING (tenant_id, subscription_id) WHERE s.customer_id = $1 AND s.status = 'active'"
        " ORDER BY a.subscription_id, a.allowance, a.period_start DESC", customer_id)
    return [AllowanceRow(**dict(r)) for r in rows]


async def rated_usage(conn: Connection, customer_id: uuid.UUID, limit: int,
                      before: tuple[datetime, uuid.UUID] | None = None) -> list[RatedRow]:
    """Newest first, keyset-paginated on (start_time, event_id)."""
    columns = ("event_id, subscription_id, customer_id, service, quantity, allowance_units,"
               " chargeable_units, amount_micros, currency, price_name, catalog_revision,"
               " start_time, price_factors")
    if before is None:
        rows = await conn.fetch(
            f"SELECT {columns} FROM rated_usage WHERE customer_id = $1"
            " ORDER BY start_time DESC, event_id DESC LIMIT $2", customer_id, limit)
    else:
        rows = await conn.fetch(
            f"SELECT {columns} FROM rated_usage WHERE customer_id = $1"
            " AND (start_time, event_id) < ($3, $4)"
            " ORDER BY start_time DESC, event_id DESC LIMIT $2", customer_id, limit, *before)
    return [RatedRow(**{**dict(r), "currency": r["currency"].strip()}) for r in rows]
