"""Bulk reads and writes of one rating batch, each a single round trip (arrays, unnest).

COPY FROM is not allowed on tables with row-level security, so bulk inserts use
INSERT … SELECT FROM unnest($arrays), which costs one statement per table per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from tollgate_core.domain.ledger import Transfer
from tollgate_core.store.db import Connection

BucketKey = tuple[uuid.UUID, str, date]
BucketTerms = tuple[int, date | None]
"""(quantity per period, start of the period whose unused units roll over, if any)"""
PaidKey = tuple[uuid.UUID, str, date]


@dataclass(frozen=True, slots=True)
class ActiveSubscription:
    subscription_id: uuid.UUID
    customer_id: uuid.UUID
    offer: str
    subscriber: str
    started_at: datetime
    catalog_revision: int
    loyalty_tier: str | None = None


@dataclass(frozen=True, slots=True)
class RatedRow:
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    customer_id: uuid.UUID
    service: str
    quantity: int
    allowance_units: int
    chargeable_units: int
    amount_micros: int
    currency: str
    price_name: str | None
    catalog_revision: int
    start_time: datetime
    price_factors: dict[str, str] = field(default_factory=dict)


async def claim_inbox(conn: Connection, tenant: str, consumer: str,
                      keys: Sequence[str]) -> set[str]:
    """Record the keys as handled; return those not handled before (the new ones)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (tenant_id, consumer, event_id)"
        " SELECT $1, $2, k FROM unnest($3::text[]) AS k ON CONFLICT DO NOTHING RETURNING event_id",
        tenant, consumer, list(keys))
    return {r["event_id"] for r in rows}


_ACTIVE_COLUMNS = ("s.subscription_id, s.customer_id, s.offer, s.subscriber, s.started_at,"
                   " s.catalog_revision, c.loyalty_tier")


async def active_subscriptions(conn: Connection,
                               subscribers: Sequence[str]) -> dict[str, list[ActiveSubscription]]:
    rows = await conn.fetch(
        f"SELECT {_ACTIVE_COLUMNS} FROM subscriptions s JOIN customers c USING (tenant_id,"
        " customer_id) WHERE s.subscriber = ANY($1::text[]) AND s.status = 'active'"
        " ORDER BY s.started_at, s.subscription_id", list(subscribers))
    found: dict[str, list[ActiveSubscription]] = {}
    for r in rows:
        found.setdefault(r["subscriber"], []).append(ActiveSubscription(**dict(r)))
    return found


async def active_subscriptions_by_id(conn: Connection, subscription_ids: Sequence[uuid.UUID]
                                     ) -> list[ActiveSubscription]:
    rows = await conn.fetch(
        f"SELECT {_ACTIVE_COLUMNS} FROM subscriptions s JOIN customers c USING (tenant_id,"
        " customer_id) WHERE s.subscription_id = ANY($1::uuid[])", list(subscription_ids))
    return [ActiveSubscription(**dict(r)) for r in rows]


async def lock_allowances(conn: Connection, tenant: str, wanted: dict[BucketKey, BucketTerms]
                          ) -> dict[BucketKey, tuple[int, int, int]]:
    """Create missing period rows, lock all; return key → (quantity, used, reserved).

    A new period of a rollover allowance starts with its quantity plus what the previous
    period left unused (at most one period's quantity; units still reserved there are not
    carried, they will be committed there)."""
    if not wanted:
        return {}
    keys = sorted(wanted)
    subs, names, periods = [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    # One statement creates missing rows and locks all of them, in key order (the upsert's
    # DO UPDATE takes the row lock and makes RETURNING include the existing rows).
    rows = await conn.fetch(
        "INSERT INTO allowance_usage (tenant_id, subscription_id, allowance, period_start,"
        " quantity) SELECT $1, k.s, k.n, k.p, k.q + coalesce(least(greatest("
        "  prev.quantity - prev.used - prev.reserved, 0), k.q), 0)"
        " FROM unnest($2::uuid[], $3::text[], $4::date[], $5::bigint[], $6::date[])"
        "  AS k(s, n, p, q, carry)"
        " LEFT JOIN allowance_usage prev ON prev.subscription_id = k.s AND prev.allowance = k.n"
        "  AND prev.period_start = k.carry"
        " ORDER BY 2, 3, 4 ON CONFLICT (tenant_id, subscription_id, allowance, period_start)"
        " DO UPDATE SET quantity = allowance_usage.quantity"
        " RETURNING subscription_id, allowance, period_start, quantity, used, reserved",
        tenant, subs, names, periods, [wanted[k][0] for k in keys],
        [wanted[k][1] for k in keys])
    return {(r["subscription_id"], r["allowance"], r["period_start"]):
            (r["quantity"], r["used"], r["reserved"]) for r in rows}


async def lock_paid_usage(conn: Connection, tenant: str,
                          wanted: Sequence[PaidKey]) -> dict[PaidKey, int]:
    if not wanted:
        return {}
    keys = sorted(set(wanted))
    subs, services, periods = [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    rows = await conn.fetch(
        "INSERT INTO paid_usage (tenant_id, subscription_id, service, period_start)"
        " SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::date[]) ORDER BY 1, 2, 3"
        " ON CONFLICT (tenant_id, subscription_id, service, period_start)"
        " DO UPDATE SET units = paid_usage.units"
        " RETURNING subscription_id, service, period_start, units",
        tenant, subs, services, periods)
    return {(r["subscription_id"], r["service"], r["period_start"]): r["units"] for r in rows}


@dataclass(frozen=True, slots=True)
class AccountState:
    balance_micros: int
    pending_micros: int
    floor_micros: int | None

    @property
    def spendable_micros(self) -> int | None:
        """What may still be debited; None when the account has no floor."""
        if self.floor_micros is None:
            return None
        return max(self.balance_micros - self.pending_micros - self.floor_micros, 0)


async def lock_balances(conn: Connection, accounts: Sequence[str]) -> dict[str, AccountState]:
    """Lock ledger accounts in id order (no deadlocks between engines)."""
    if not accounts:
        return {}
    rows = await conn.fetch(
        "SELECT account_id, balance_micros, pending_micros, floor_micros FROM ledger_accounts"
        " WHERE account_id = ANY($1::text[]) ORDER BY account_id FOR UPDATE",
        sorted(set(accounts)))
    return {r["account_id"]: AccountState(r["balance_micros"], r["pending_micros"],
                                          r["floor_micros"]) for r in rows}


async def save_allowances(conn: Connection, used: dict[BucketKey, int]) -> None:
    if not used:
        return
    keys = sorted(used)
    await conn.execute(
        "UPDATE allowance_usage a SET used = k.u FROM unnest($1::uuid[], $2::text[],"
        " $3::date[], $4::bigint[]) AS k(s, n, p, u) WHERE a.subscription_id = k.s"
        " AND a.allowance = k.n AND a.period_start = k.p",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [used[k] for k in keys])


async def save_paid_usage(conn: Connection, units: dict[PaidKey, int]) -> None:
    if not units:
        return
    keys = sorted(units)
    await conn.execute(
        "UPDATE paid_usage p SET units = k.u FROM unnest($1::uuid[], $2::text[], $3::date[],"
        " $4::bigint[]) AS k(s, v, d, u) WHERE p.subscription_id = k.s AND p.service = k.v"
        " AND p.period_start = k.d",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
        [units[k] for k in keys])


async def insert_rated(conn: Connection, tenant: str, rows: Sequence[RatedRow]) -> None:
    if not rows:
        return
    await conn.execute(
        "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id, service,"
        " quantity, allowance_units, chargeable_units, amount_micros, currency, price_name,"
        " catalog_revision, start_time, price_factors) SELECT $1, * FROM unnest($2::uuid[],"
        " $3::uuid[], $4::uuid[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[],"
        " $9::bigint[], $10::text[], $11::text[], $12::int[], $13::timestamptz[], $14::jsonb[])",
        tenant, [r.event_id for r in rows], [r.subscription_id for r in rows],
        [r.customer_id for r in rows], [r.service for r in rows], [r.quantity for r in rows],
        [r.allowance_units for r in rows], [r.chargeable_units for r in rows],
        [r.amount_micros for r in rows], [r.currency for r in rows],
        [r.price_name for r in rows], [r.catalog_revision for r in rows],
        [r.start_time for r in rows], [r.price_factors for r in rows])


async def post_transfers(conn: Connection, tenant: str,
                         transfers: Sequence[Transfer]) -> dict[str, int]:
    """Insert transfers (duplicates ignored) and apply only the new ones to balances.

    Returns the new balance of every account whose balance changed.
    """
    if not transfers:
        return {}
    inserted = await conn.fetch(
        "INSERT INTO transfers (tenant_id, transfer_id, debit_account, credit_account,"
        " amount_micros, currency, code, cause_id) SELECT $1, * FROM unnest($2::uuid[],"
        " $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[])"
        " ON CONFLICT DO NOTHING RETURNING debit_account, credit_account, amount_micros",
        tenant, [t.id for t in transfers], [t.debit_account for t in transfers],
        [t.credit_account for t in transfers], [t.amount_micros for t in transfers],
        [t.currency for t in transfers], [t.code.value for t in transfers],
        [t.cause_id for t in transfers])
    deltas: dict[str, int] = {}
    for r in inserted:
        deltas[r["debit_account"]] = deltas.get(r["debit_account"], 0) - r["amount_micros"]
        deltas[r["credit_account"]] = deltas.get(r["credit_account"], 0) + r["amount_micros"]
    if not deltas:
        return {}
    accounts = sorted(deltas)
    rows = await conn.fetch(
        "UPDATE ledger_accounts a SET balance_micros = a.balance_micros + k.d"
        " FROM unnest($1::text[], $2::bigint[]) AS k(id, d) WHERE a.account_id = k.id"
        " RETURNING a.account_id, a.balance_micros", accounts, [deltas[a] for a in accounts])
    return {r["account_id"]: r["balance_micros"] for r in rows}


async def insert_dead_letters(conn: Connection, tenant: str,
                              rows: Sequence[tuple[str, str, str, str, bytes]]) -> None:
    """rows: (key, subject, reason, detail, payload)."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO dead_letters (tenant_id, event_id, subject, reason, detail, payload)"
        " SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[])"
        # a re-driven event that fails again is an open dead letter again, with its new reason
        " ON CONFLICT (tenant_id, event_id) DO UPDATE SET reason = EXCLUDED.reason,"
        " detail = EXCLUDED.detail, created_at = now(), redriven_at = NULL", tenant,
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
        [r[4] for r in rows])
