"""Bulk reads and writes of one rating batch, each a single round trip.

COPY FROM is not allowed on tables with row-level security, so bulk inserts use
INSERT … SELECT, one statement per table per batch: FROM unnest($arrays), or, on the hot path
of offline rating, FROM the rows as one JSON parameter (:mod:`tollgate_core.store.bulk`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import asyncpg

from tollgate_core.domain.ledger import Transfer
from tollgate_core.store.bulk import json_rows
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


RatedValues = tuple[str, str, str, str, int, int, int, int, str, str | None, int, datetime,
                    dict[str, str]]
"""A rated record as the values of its columns, in RatedRow's order, ids as canonical text
(offline rating builds hundreds of them per batch)."""


def _event_id(row: RatedValues) -> str:
    return row[0]


class AlreadyHandled(Exception):
    """An event of the batch was rated or dead-lettered by another transaction meanwhile: the
    batch must roll back and be rated again without it (offline rating, ADR 0004)."""


_CLAIMS_LOCK_CLASS = 0x7011_C1A1
"""First key of the advisory lock that orders rating against dead-lettering (second key: a
hash of tenant and consumer)."""


def _uuid_or_none(key: str) -> str | None:
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return None


async def handled_events(conn: Connection, consumer: str, keys: Sequence[str]) -> set[str]:
    """The keys already handled: rated (a `rated_usage` row) or dead-lettered (an `inbox` row
    of `consumer`). Keys that are not UUIDs (a message's Nats-Msg-Id) can only be in the
    inbox; a UUID key is looked up in its canonical spelling too."""
    if not keys:
        return set()
    canonical = {k: c for k in keys if (c := _uuid_or_none(k)) is not None}
    rows = await conn.fetch(
        "SELECT r.event_id::text FROM rated_usage r"
        " WHERE r.event_id = ANY(SELECT k::uuid FROM jsonb_array_elements_text($1::text::jsonb)"
        "  AS k)"
        " UNION SELECT i.event_id FROM inbox i WHERE i.consumer = $2"
        "  AND i.event_id = ANY(SELECT jsonb_array_elements_text($3::text::jsonb))",
        json_rows(sorted(set(canonical.values()))), consumer,
        json_rows(sorted(set(keys) | set(canonical.values()))))
    found = {r[0] for r in rows}
    return {k for k in keys if k in found or canonical.get(k) in found}


async def lock_claims(conn: Connection, tenant: str, consumer: str, *, exclusive: bool
                      ) -> None:
    """Order this batch's claims against other transactions' (until commit).

    An event is claimed in one of two unique keys: its rated record, or, when it is
    dead-lettered, an inbox row. Two transactions handling the same event one way each
    would not collide on either key, so whoever dead-letters takes this lock exclusively
    and whoever rates takes it shared, each before looking for the other's claims: the
    second to come waits for the first to commit, then sees its claim."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {function}({_CLAIMS_LOCK_CLASS}, hashtext($1))",
                       f"{tenant}/{consumer}")


async def insert_rated_claims(conn: Connection, tenant: str, consumer: str,
                              rows: Sequence[RatedValues]) -> None:
    """Insert the rated records of offline rating; each is its event's claim.

    Raises AlreadyHandled, leaving the transaction to be rolled back, if an event was rated
    already (its primary key is taken: when another transaction is still rating it, this
    waits for its outcome) or dead-lettered already (an inbox row of `consumer`). Run it
    after `lock_claims` and before any other write of the batch. Rows go in in event id
    order, so two batches with some of the same events never deadlock here. Ids are in
    canonical form (lower-case 8-4-4-4-12), as the inbox keys are."""
    if not rows:
        return
    ordered: list[RatedValues] = sorted(rows, key=_event_id)
    try:
        inserted = await conn.fetchval(
            "WITH rated AS (INSERT INTO rated_usage (tenant_id, event_id, subscription_id,"
            " customer_id, service, quantity, allowance_units, chargeable_units, amount_micros,"
            " currency, price_name, catalog_revision, start_time, price_factors)"
            " SELECT $1, (e->>0)::uuid, (e->>1)::uuid, (e->>2)::uuid, e->>3, (e->>4)::bigint,"
            " (e->>5)::bigint, (e->>6)::bigint, (e->>7)::bigint, e->>8, e->>9, (e->>10)::int,"
            " (e->>11)::timestamptz, e->12 FROM jsonb_array_elements($2::text::jsonb) AS e"
            " WHERE NOT EXISTS (SELECT FROM inbox i WHERE i.tenant_id = $1"
            "  AND i.consumer = $3 AND i.event_id = e->>0)"
            " RETURNING 1) SELECT count(*) FROM rated",
            tenant, json_rows(ordered), consumer)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "rated_usage_pkey":
            raise
        raise AlreadyHandled(str(exc)) from exc
    if inserted != len(rows):
        raise AlreadyHandled("an event of the batch was dead-lettered already")


async def claim_rejects(conn: Connection, tenant: str, consumer: str,
                        keys: Sequence[str]) -> set[str]:
    """Claim the keys of events about to be dead-lettered (inbox rows); return those
    claimed now. A key already in the inbox, or the id of an event already rated, is left
    out: it was handled. Run it after `lock_claims(exclusive=True)`."""
    if not keys:
        return set()
    canonical = {k: c for k in keys if (c := _uuid_or_none(k)) is not None}
    rated = {r[0] for r in await conn.fetch(
        "SELECT r.event_id::text FROM rated_usage r"
        " WHERE r.event_id = ANY(SELECT k::uuid FROM jsonb_array_elements_text($1::text::jsonb)"
        "  AS k)", json_rows(sorted(set(canonical.values()))))} if canonical else set()
    wanted = sorted(k for k in set(keys) if canonical.get(k) not in rated)
    if not wanted:
        return set()
    claimed = await conn.fetch(
        "INSERT INTO inbox (tenant_id, consumer, event_id)"
        " SELECT $1, $2, k FROM jsonb_array_elements_text($3::text::jsonb) AS k ORDER BY k"
        " ON CONFLICT DO NOTHING RETURNING event_id", tenant, consumer, json_rows(wanted))
    return {r[0] for r in claimed}


_ACTIVE_COLUMNS = ("s.subscription_id, s.customer_id, s.offer, s.subscriber, s.started_at,"
                   " s.catalog_revision, c.loyalty_tier")


async def active_subscriptions(conn: Connection,
                               subscribers: Sequence[str]) -> dict[str, list[ActiveSubscription]]:
    rows = await conn.fetch(
        f"SELECT {_ACTIVE_COLUMNS} FROM subscriptions s JOIN customers c USING (tenant_id,"
        " customer_id) WHERE s.subscriber = ANY($1::text[]) AND s.status = 'active'"
        " ORDER BY s.started_at, s.subscription_id", list(subscribers))
    found: dict[str, list[ActiveSubscription]] = {}
    for r in rows:  # the columns are the fields, in order
        found.setdefault(r[3], []).append(ActiveSubscription(*r))
    return found


async def active_subscriptions_by_id(conn: Connection, subscription_ids: Sequence[uuid.UUID]
                                     ) -> list[ActiveSubscription]:
    rows = await conn.fetch(
        f"SELECT {_ACTIVE_COLUMNS} FROM subscriptions s JOIN customers c USING (tenant_id,"
        " customer_id) WHERE s.subscription_id = ANY($1::uuid[])", list(subscription_ids))
    return [ActiveSubscription(**dict(r)) for r in rows]


async def lock_allowances(conn: Connection, tenant: str, wanted: dict[BucketKey, BucketTerms]
                          ) -> dict[BucketKey, tuple[int, int, int]]:
    """Create missing period rows, lock all in key order; return key → (quantity, used,
    reserved).

    A new period of a rollover allowance starts with its quantity plus what the previous
    period left unused (at most one period's quantity; units still reserved there are not
    carried, they will be committed there)."""
    if not wanted:
        return {}
    keys = sorted(wanted)
    # Nearly always every row exists: lock them with SELECT … FOR UPDATE, which writes no new
    # row version (an upsert's DO UPDATE would, and would make the later UPDATE of `used`
    # check the foreign keys again).
    found = await conn.fetch(
        "SELECT e.i, a.quantity, a.used, a.reserved"
        " FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY AS e(k, i)"
        " JOIN allowance_usage a ON a.subscription_id = (e.k->>0)::uuid"
        "  AND a.allowance = e.k->>1 AND a.period_start = (e.k->>2)::date"
        " ORDER BY a.subscription_id, a.allowance, a.period_start FOR UPDATE OF a",
        json_rows(keys))
    if len(found) == len(keys):  # rows come back as the position of their key (from 1)
        return {keys[i - 1]: (q, used, reserved) for i, q, used, reserved in found}
    # The first usage of a period: one statement creates the missing rows and locks all of
    # them, in key order (the upsert's DO UPDATE takes the row lock and makes RETURNING
    # include the existing rows).
    subs, names, periods = [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    rows = await conn.fetch(
        "INSERT INTO allowance_usage (tenant_id, subscription_id, allowance, period_start,"
        " quantity) SELECT $1, k.s, k.n, k.p, k.q + coalesce(least(greatest("
        "  prev.quantity - prev.used - prev.reserved, 0), k.q), 0)"
        " FROM unnest($2::uuid[], $3::text[], $4::date[], $5::bigint[], $6::date[])"
        "  AS k(s, n, p, q, carry)"
        " LEFT JOIN allowance_usage prev ON prev.subscription_id = k.s"
        "  AND prev.allowance = k.n AND prev.period_start = k.carry"
        " ORDER BY 2, 3, 4 ON CONFLICT (tenant_id, subscription_id, allowance, period_start)"
        " DO UPDATE SET quantity = allowance_usage.quantity"
        " RETURNING subscription_id, allowance, period_start, quantity, used, reserved",
        tenant, subs, names, periods, [wanted[k][0] for k in keys],
        [wanted[k][1] for k in keys])
    return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}


async def lock_paid_usage(conn: Connection, tenant: str,
                          wanted: Sequence[PaidKey]) -> dict[PaidKey, int]:
    """Create missing counters, lock all in key order; return key → paid units so far."""
    if not wanted:
        return {}
    keys = sorted(set(wanted))
    found = await conn.fetch(
        "SELECT e.i, p.units FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY"
        "  AS e(k, i)"
        " JOIN paid_usage p ON p.subscription_id = (e.k->>0)::uuid AND p.service = e.k->>1"
        "  AND p.period_start = (e.k->>2)::date"
        " ORDER BY p.subscription_id, p.service, p.period_start FOR UPDATE OF p",
        json_rows(keys))
    if len(found) == len(keys):
        return {keys[i - 1]: units for i, units in found}
    subs, services, periods = [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    rows = await conn.fetch(
        "INSERT INTO paid_usage (tenant_id, subscription_id, service, period_start)"
        " SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::date[]) ORDER BY 1, 2, 3"
        " ON CONFLICT (tenant_id, subscription_id, service, period_start)"
        " DO UPDATE SET units = paid_usage.units"
        " RETURNING subscription_id, service, period_start, units",
        tenant, subs, services, periods)
    return {(r[0], r[1], r[2]): r[3] for r in rows}


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
    await conn.execute(
        "UPDATE allowance_usage a SET used = k.u FROM (SELECT (e->>0)::uuid AS s, e->>1 AS n,"
        " (e->>2)::date AS p, (e->>3)::bigint AS u FROM jsonb_array_elements($1::text::jsonb)"
        " AS e) AS k WHERE a.subscription_id = k.s AND a.allowance = k.n AND a.period_start = k.p",
        json_rows([(*k, used[k]) for k in sorted(used)]))


async def save_paid_usage(conn: Connection, units: dict[PaidKey, int]) -> None:
    if not units:
        return
    await conn.execute(
        "UPDATE paid_usage p SET units = k.u FROM (SELECT (e->>0)::uuid AS s, e->>1 AS v,"
        " (e->>2)::date AS d, (e->>3)::bigint AS u FROM jsonb_array_elements($1::text::jsonb)"
        " AS e) AS k WHERE p.subscription_id = k.s AND p.service = k.v AND p.period_start = k.d",
        json_rows([(*k, units[k]) for k in sorted(units)]))


async def insert_rated(conn: Connection, tenant: str, rows: Sequence[RatedRow]) -> None:
    if not rows:
        return
    await conn.execute(
        "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id, service,"
        " quantity, allowance_units, chargeable_units, amount_micros, currency, price_name,"
        " catalog_revision, start_time, price_factors) SELECT $1, (e->>0)::uuid, (e->>1)::uuid,"
        " (e->>2)::uuid, e->>3, (e->>4)::bigint, (e->>5)::bigint, (e->>6)::bigint,"
        " (e->>7)::bigint, e->>8, e->>9, (e->>10)::int, (e->>11)::timestamptz, e->12"
        " FROM jsonb_array_elements($2::text::jsonb) AS e",
        tenant, json_rows([
            (r.event_id, r.subscription_id, r.customer_id, r.service, r.quantity,
             r.allowance_units, r.chargeable_units, r.amount_micros, r.currency, r.price_name,
             r.catalog_revision, r.start_time, r.price_factors) for r in rows]))


async def post_transfers(conn: Connection, tenant: str,
                         transfers: Sequence[Transfer]) -> dict[str, int]:
    """Insert transfers (duplicates ignored) and apply only the new ones to balances.

    Returns the new balance of every account whose balance changed.
    """
    if not transfers:
        return {}
    inserted = await conn.fetch(
        "INSERT INTO transfers (tenant_id, transfer_id, debit_account, credit_account,"
        " amount_micros, currency, code, cause_id) SELECT $1, (e->>0)::uuid, e->>1, e->>2,"
        " (e->>3)::bigint, e->>4, e->>5, e->>6 FROM jsonb_array_elements($2::text::jsonb) AS e"
        " ON CONFLICT DO NOTHING RETURNING debit_account, credit_account, amount_micros",
        tenant, json_rows([(t.id, t.debit_account, t.credit_account, t.amount_micros,
                            t.currency, t.code.value, t.cause_id) for t in transfers]))
    deltas: dict[str, int] = {}
    for debit, credit, amount in inserted:
        deltas[debit] = deltas.get(debit, 0) - amount
        deltas[credit] = deltas.get(credit, 0) + amount
    if not deltas:
        return {}
    rows = await conn.fetch(
        "UPDATE ledger_accounts a SET balance_micros = a.balance_micros + k.d"
        " FROM (SELECT e->>0 AS id, (e->>1)::bigint AS d"
        "  FROM jsonb_array_elements($1::text::jsonb) AS e) AS k WHERE a.account_id = k.id"
        " RETURNING a.account_id, a.balance_micros",
        json_rows([(a, deltas[a]) for a in sorted(deltas)]))
    return {r[0]: r[1] for r in rows}


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
