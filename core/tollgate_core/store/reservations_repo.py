"""Reservations of online charging and the allowance/balance holds they place.

Online charging decides a group of requests in one transaction of a fixed number of
statements, whatever the group's size (ADR 0007): :func:`read` (the reservations asked about,
locked, and the subscriptions of the lines asking for new ones), :func:`lock` (every row the
group may change, in the engines' lock order), then, once the decisions are taken in Python,
:func:`write` (all their effects). Locks are taken in one order everywhere: reservations (by
id), allowance counters, paid-usage counters, accounts. Where one statement takes several of
them, each step waits for the one before: an uncorrelated sub-select on it, which PostgreSQL
evaluates once, before the step's first row, rather than the order in which the executor
happens to run CTEs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from tollgate_core.domain.ledger import Transfer, customer_account
from tollgate_core.store import rating_repo
from tollgate_core.store.bulk import json_rows
from tollgate_core.store.db import Connection
from tollgate_core.store.rating_repo import (
    AccountState,
    ActiveSubscription,
    BucketKey,
    BucketTerms,
    PaidKey,
    RatedRow,
)


@dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: uuid.UUID
    session_id: str
    request_number: int
    subscription_id: uuid.UUID
    customer_id: uuid.UUID
    service: str
    granted_units: int
    allowance_units: list[list[Any]]  # [[subscription id, allowance, period_start, units], …]
    pending_micros: int
    catalog_revision: int
    state: str
    used_units: int | None
    charged_micros: int | None
    expires_at: datetime
    price_factors: dict[str, str]
    price_factor: str
    created_at: datetime

    def held_allowances(self) -> list[tuple[BucketKey, int]]:
        return [((uuid.UUID(s), str(a), date.fromisoformat(p)), int(u))
                for s, a, p, u in self.allowance_units]


# The fields of Reservation, in order: a row becomes one positionally.
_COLUMNS = ("reservation_id, session_id, request_number, subscription_id, customer_id, service,"
            " granted_units, allowance_units, pending_micros, catalog_revision, state,"
            " used_units, charged_micros, expires_at, price_factors, price_factor, created_at")
_FIELDS = len(_COLUMNS.split(","))
_SUBSCRIPTION = ("SELECT s.subscription_id, s.customer_id, s.offer, s.subscriber, s.started_at,"
                 " s.catalog_revision, c.loyalty_tier"  # the fields of ActiveSubscription
                 " FROM subscriptions s JOIN customers c USING (tenant_id, customer_id)")


def _cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c.strip()}" for c in _COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class Found:
    previous: dict[int, Reservation]
    """position of a lookup → the reservation its (session, request number) already has"""
    subscriptions: dict[int, list[ActiveSubscription]]
    """position of a lookup without one → the line's active subscriptions, in order"""
    locked: dict[uuid.UUID, tuple[Reservation, ActiveSubscription | None]]
    """reservation id → the reservation, locked, and its subscription (whatever its status)"""


# LIMIT and OFFSET 0 keep the planner from turning the lateral look-ups into joins that hash a
# whole table: each is an index probe per lookup (reservations by (session, request number),
# subscriptions by line or by id), whatever the tables' sizes.
_READ = (
    "WITH q AS (SELECT x.i, x.e->>0 AS session_id, (x.e->>1)::int AS request_number,"
    "  x.e->>2 AS subscriber FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY"
    "  AS x(e, i)),"
    f" l AS MATERIALIZED (SELECT {_COLUMNS} FROM reservations"
    "  WHERE reservation_id = ANY($2::uuid[]) ORDER BY reservation_id FOR UPDATE)"
    f" SELECT q.i, {_cols('r')}, sub.* FROM q"
    f" LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM reservations"
    "  WHERE session_id = q.session_id AND request_number = q.request_number LIMIT 1) r ON true"
    f" LEFT JOIN LATERAL ({_SUBSCRIPTION} WHERE r.reservation_id IS NULL"
    "  AND s.subscriber = q.subscriber AND s.status = 'active' OFFSET 0) sub ON true"
    f" UNION ALL SELECT NULL, {_cols('l')}, sub.* FROM l"
    f" LEFT JOIN LATERAL ({_SUBSCRIPTION} WHERE s.subscription_id = l.subscription_id"
    "  LIMIT 1) sub ON true")


async def read(conn: Connection, lookups: Sequence[tuple[str, int, str]],
               reservation_ids: Iterable[uuid.UUID]) -> Found:
    """One statement: for each (session id, request number, subscriber) of `lookups`, the
    reservation it already got (a retry) or else the line's active subscriptions; and the
    reservations `reservation_ids`, locked in id order, each with its subscription."""
    rows = await conn.fetch(_READ, json_rows(list(lookups)), sorted(set(reservation_ids)))
    found = Found({}, {}, {})
    for row in rows:
        subscription = None if row[1 + _FIELDS] is None else ActiveSubscription(
            *row[1 + _FIELDS:])
        if row[0] is None:
            r = Reservation(*row[1:1 + _FIELDS])
            found.locked[r.reservation_id] = (r, subscription)
        elif row[1] is not None:
            found.previous[row[0] - 1] = Reservation(*row[1:1 + _FIELDS])
        elif subscription is not None:
            found.subscriptions.setdefault(row[0] - 1, []).append(subscription)
    for subs in found.subscriptions.values():  # subscription order, as offline rating has it
        subs.sort(key=lambda s: (s.started_at, s.subscription_id))
    return found


@dataclass(frozen=True, slots=True)
class Locked:
    allowances: dict[BucketKey, tuple[int, int, int]]
    """key → (quantity, used, reserved)"""
    paid: dict[PaidKey, int]
    """key → paid units so far in the period"""
    accounts: dict[str, AccountState]


# The `= ANY(ARRAY(…))` conditions repeat the keys as index conditions, so that the rows are
# found by index probes rather than by hashing the whole table against the keys (which the
# planner prefers while it guesses a hundred keys for a JSON array; a group has a few).
_LOCK = (
    # 1. allowance counters, in key order
    "WITH ak AS (SELECT e.k, e.i FROM jsonb_array_elements($1::text::jsonb) WITH ORDINALITY"
    "  AS e(k, i)),"
    " a AS MATERIALIZED (SELECT ak.i, u.quantity, u.used, u.reserved FROM allowance_usage u"
    "  JOIN ak ON u.subscription_id = (ak.k->>0)::uuid AND u.allowance = ak.k->>1"
    "   AND u.period_start = (ak.k->>2)::date"
    "  WHERE u.subscription_id = ANY(ARRAY(SELECT (k->>0)::uuid FROM ak))"
    "   AND u.period_start = ANY(ARRAY(SELECT (k->>2)::date FROM ak))"
    "  ORDER BY u.subscription_id, u.allowance, u.period_start FOR UPDATE OF u),"
    # 2. paid-usage counters, in key order, once (and only if) every allowance row is locked
    " pk AS (SELECT e.k, e.i FROM jsonb_array_elements($2::text::jsonb) WITH ORDINALITY"
    "  AS e(k, i)),"
    " p AS MATERIALIZED (SELECT pk.i, u.units FROM paid_usage u"
    "  JOIN pk ON u.subscription_id = (pk.k->>0)::uuid AND u.service = pk.k->>1"
    "   AND u.period_start = (pk.k->>2)::date"
    "  WHERE u.subscription_id = ANY(ARRAY(SELECT (k->>0)::uuid FROM pk))"
    "   AND u.period_start = ANY(ARRAY(SELECT (k->>2)::date FROM pk))"
    "   AND (SELECT count(*) FROM a) = $3"
    "  ORDER BY u.subscription_id, u.service, u.period_start FOR UPDATE OF u),"
    # 3. accounts, in id order, once (and only if) both steps before are complete
    " b AS MATERIALIZED (SELECT account_id, balance_micros, pending_micros, floor_micros"
    "  FROM ledger_accounts WHERE account_id = ANY($5::text[])"
    "  AND (SELECT count(*) FROM a) = $3 AND (SELECT count(*) FROM p) = $4"
    "  ORDER BY account_id FOR UPDATE)"
    " SELECT 0, i, quantity, used, reserved, NULL FROM a"
    " UNION ALL SELECT 1, i, units, NULL, NULL, NULL FROM p"
    " UNION ALL SELECT 2, NULL, balance_micros, pending_micros, floor_micros, account_id FROM b")


async def lock(conn: Connection, tenant: str, allowances: dict[BucketKey, BucketTerms],
               paid: Iterable[PaidKey], accounts: Iterable[str]) -> Locked:
    """Lock every row a group of requests may change, in the engines' lock order: allowance
    counters, paid-usage counters, accounts, each in key order. One statement when the
    counters of the period exist (nearly always); the first request of a period creates
    them with the statements of offline rating, still in that order. KeyError if an account
    is missing."""
    a_keys, p_keys, accounts = sorted(allowances), sorted(set(paid)), sorted(set(accounts))
    rows = await conn.fetch(_LOCK, json_rows(a_keys), json_rows(p_keys), len(a_keys),
                            len(p_keys), accounts)
    found: dict[BucketKey, tuple[int, int, int]] = {}
    units: dict[PaidKey, int] = {}
    states: dict[str, AccountState] = {}
    for kind, i, x, y, z, account in rows:
        if kind == 0:
            found[a_keys[i - 1]] = (x, y, z)
        elif kind == 1:
            units[p_keys[i - 1]] = x
        else:
            states[account] = AccountState(x, y, z)
    if len(found) < len(a_keys):  # steps 2 and 3 did not run
        found = await rating_repo.lock_allowances(conn, tenant, allowances)
        units, states = {}, {}
    if len(units) < len(p_keys):  # step 3 did not run
        units = await rating_repo.lock_paid_usage(conn, tenant, p_keys)
        states = {}
    if len(states) < len(accounts):
        states = await rating_repo.lock_balances(conn, accounts)
    return Locked(found, units, {a: states[a] for a in accounts})


@dataclass(slots=True)
class Writes:
    """Everything a group of decisions changes, written by :func:`write` in one statement."""

    reservations: list[Reservation] = field(default_factory=list)
    """new, pending"""
    closed: list[tuple[uuid.UUID, str, int | None, int | None]] = field(default_factory=list)
    """(reservation id, state, used units, charged micros)"""
    allowances: dict[BucketKey, list[int]] = field(default_factory=dict)
    """key → [change of reserved, change of used]"""
    paid: dict[PaidKey, int] = field(default_factory=dict)
    """key → new paid units"""
    pending: dict[str, int] = field(default_factory=dict)
    """account → change of pending_micros"""
    transfers: list[Transfer] = field(default_factory=list)
    """new transfers (their ids are new: each is caused by a reservation closed here)"""
    balances: dict[str, int] = field(default_factory=dict)
    """account → its balance once the transfers are posted (checked before events go out)"""
    rated: list[RatedRow] = field(default_factory=list)
    events: list[tuple[uuid.UUID, str, bytes]] = field(default_factory=list)
    """outbox rows (id, subject, payload)"""

    def hold(self, allowances: Iterable[tuple[BucketKey, int]], used: Iterable[
            tuple[BucketKey, int]], account: str, pending_micros: int) -> None:
        """Change holds (positive: place, negative: lift) and draw used allowance units."""
        for key, units in allowances:
            self.allowances.setdefault(key, [0, 0])[0] += units
        for key, units in used:
            self.allowances.setdefault(key, [0, 0])[1] += units
        if pending_micros:
            self.pending[account] = self.pending.get(account, 0) + pending_micros

    def __bool__(self) -> bool:
        return bool(self.reservations or self.closed)


class _Statement:
    """A statement made of the CTEs a group needs (each kind of group has its own text, which
    asyncpg prepares once per connection), its parameters, and the counts it returns."""

    def __init__(self, tenant: str) -> None:
        self.ctes: list[str] = []
        self.args: list[Any] = []
        self.counts: list[str] = []
        self._tenant = tenant
        self._tenant_arg = ""

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    @property
    def tenant(self) -> str:
        """The tenant id's parameter (a statement may not have a parameter it does not use)."""
        if not self._tenant_arg:
            self._tenant_arg = self.arg(self._tenant)
        return self._tenant_arg

    def sql(self) -> str:
        return f"WITH {', '.join(self.ctes)} SELECT {', '.join(self.counts)}"


def _write_statement(tenant: str, w: Writes, allowances: list[tuple[BucketKey, list[int]]],
                     pending: list[tuple[str, int]]) -> tuple[_Statement, list[int]]:
    """The write statement of a group, and the counts it must return."""
    st = _Statement(tenant)
    expected: list[int] = []

    def count(name: str, n: int) -> None:
        st.counts.append(f"(SELECT count(*) FROM {name})")
        expected.append(n)

    # Every update finds its rows through `= ANY(ARRAY(…))` index conditions, never by hashing
    # a whole table against the rows it was given.
    if w.reservations:
        rows = st.arg(json_rows([
            (r.reservation_id, r.session_id, r.request_number, r.subscription_id,
             r.customer_id, r.service, r.granted_units, r.allowance_units, r.pending_micros,
             r.catalog_revision, r.expires_at, r.price_factors, r.price_factor, r.created_at)
            for r in w.reservations]))
        st.ctes.append(
            "ins AS (INSERT INTO reservations (tenant_id, reservation_id, session_id,"
            " request_number, subscription_id, customer_id, service, granted_units,"
            " allowance_units, pending_micros, catalog_revision, state, expires_at,"
            " price_factors, price_factor, created_at)"
            f" SELECT {st.tenant}, (e->>0)::uuid, e->>1, (e->>2)::int, (e->>3)::uuid,"
            " (e->>4)::uuid, e->>5,"
            " (e->>6)::bigint, e->7, (e->>8)::bigint, (e->>9)::int, 'pending',"
            " (e->>10)::timestamptz, e->11, e->>12, (e->>13)::timestamptz"
            f" FROM jsonb_array_elements({rows}::text::jsonb) AS e RETURNING 1)")
        count("ins", len(w.reservations))
    if w.closed:
        closed = st.arg(json_rows(w.closed))
        st.ctes.append(
            f"ce AS (SELECT (e->>0)::uuid AS id, e FROM jsonb_array_elements({closed}::text::jsonb)"
            " AS e),"
            " cl AS (UPDATE reservations r SET state = ce.e->>1, used_units = (ce.e->>2)::bigint,"
            " charged_micros = (ce.e->>3)::bigint, closed_at = now() FROM ce"
            " WHERE r.reservation_id = ce.id AND r.reservation_id = ANY(ARRAY(SELECT id FROM ce))"
            " RETURNING 1)")
        count("cl", len(w.closed))
    if allowances:
        changes = st.arg(json_rows([(*k, reserved, used) for k, (reserved, used) in allowances]))
        st.ctes.append(
            "ae AS (SELECT (e->>0)::uuid AS s, e->>1 AS n, (e->>2)::date AS p,"
            " (e->>3)::bigint AS reserved, (e->>4)::bigint AS used"
            f" FROM jsonb_array_elements({changes}::text::jsonb) AS e),"
            " al AS (UPDATE allowance_usage u SET reserved = u.reserved + ae.reserved,"
            " used = u.used + ae.used FROM ae WHERE u.subscription_id = ae.s"
            " AND u.allowance = ae.n AND u.period_start = ae.p"
            " AND u.subscription_id = ANY(ARRAY(SELECT s FROM ae))"
            " AND u.period_start = ANY(ARRAY(SELECT p FROM ae)) RETURNING 1)")
        count("al", len(allowances))
    if w.paid:
        units = st.arg(json_rows([(*k, n) for k, n in sorted(w.paid.items())]))
        st.ctes.append(
            "pe AS (SELECT (e->>0)::uuid AS s, e->>1 AS v, (e->>2)::date AS p,"
            f" (e->>3)::bigint AS units FROM jsonb_array_elements({units}::text::jsonb) AS e),"
            " pu AS (UPDATE paid_usage u SET units = pe.units FROM pe"
            " WHERE u.subscription_id = pe.s AND u.service = pe.v AND u.period_start = pe.p"
            " AND u.subscription_id = ANY(ARRAY(SELECT s FROM pe))"
            " AND u.period_start = ANY(ARRAY(SELECT p FROM pe)) RETURNING 1)")
        count("pu", len(w.paid))
    if w.transfers or pending:
        moves = []
        if w.transfers:
            # a known id is ignored, and only new transfers move balances (post_transfers)
            transfers = st.arg(json_rows([(t.id, t.debit_account, t.credit_account,
                                           t.amount_micros, t.currency, t.code.value,
                                           t.cause_id) for t in w.transfers]))
            st.ctes.append(
                "t AS (INSERT INTO transfers (tenant_id, transfer_id, debit_account,"
                f" credit_account, amount_micros, currency, code, cause_id) SELECT {st.tenant},"
                " (e->>0)::uuid, e->>1, e->>2, (e->>3)::bigint, e->>4, e->>5, e->>6"
                f" FROM jsonb_array_elements({transfers}::text::jsonb) AS e"
                " ON CONFLICT DO NOTHING RETURNING debit_account, credit_account, amount_micros)")
            count("t", len(w.transfers))
            moves += ["SELECT debit_account, -amount_micros, 0::bigint FROM t",
                      "SELECT credit_account, amount_micros, 0::bigint FROM t"]
        if pending:
            holds = st.arg(json_rows(pending))
            moves.append(f"SELECT e->>0, 0::bigint, (e->>1)::bigint"
                         f" FROM jsonb_array_elements({holds}::text::jsonb) AS e")
        # one update per account: what the new transfers move, and the change of its holds
        st.ctes.append(
            "d AS MATERIALIZED (SELECT x.account, sum(x.amount)::bigint AS amount,"
            f" sum(x.pending)::bigint AS pending FROM ({' UNION ALL '.join(moves)})"
            " AS x(account, amount, pending) GROUP BY x.account),"
            " acc AS (UPDATE ledger_accounts a SET balance_micros = a.balance_micros + d.amount,"
            " pending_micros = a.pending_micros + d.pending FROM d WHERE a.account_id = d.account"
            " AND a.account_id = ANY(ARRAY(SELECT account FROM d))"
            " RETURNING a.account_id, a.balance_micros)")
    if w.events:
        # the events carry balances computed in Python: they go out only if those are right
        balances = st.arg(json_rows(sorted(w.balances.items())))
        ids, subjects, payloads = (st.arg([e[n] for e in w.events]) for n in range(3))
        st.ctes.append(
            "ok AS (SELECT count(*) AS n FROM acc"
            f" JOIN jsonb_array_elements({balances}::text::jsonb) AS e"
            " ON acc.account_id = e->>0 AND acc.balance_micros = (e->>1)::bigint),"
            " ev AS (INSERT INTO outbox (tenant_id, id, subject, payload)"
            f" SELECT {st.tenant}, * FROM unnest({ids}::uuid[], {subjects}::text[],"
            f" {payloads}::bytea[])"
            f" WHERE (SELECT n FROM ok) = {len(w.balances)} RETURNING 1)")
        count("ev", len(w.events))
    if w.rated:
        rated = st.arg(json_rows([
            (r.event_id, r.subscription_id, r.customer_id, r.service, r.quantity,
             r.allowance_units, r.chargeable_units, r.amount_micros, r.currency, r.price_name,
             r.catalog_revision, r.start_time, r.price_factors) for r in w.rated]))
        st.ctes.append(
            "ru AS (INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id,"
            " service, quantity, allowance_units, chargeable_units, amount_micros, currency,"
            f" price_name, catalog_revision, start_time, price_factors) SELECT {st.tenant},"
            " (e->>0)::uuid,"
            " (e->>1)::uuid, (e->>2)::uuid, e->>3, (e->>4)::bigint, (e->>5)::bigint,"
            " (e->>6)::bigint, (e->>7)::bigint, e->>8, e->>9, (e->>10)::int,"
            f" (e->>11)::timestamptz, e->12 FROM jsonb_array_elements({rated}::text::jsonb) AS e"
            " RETURNING 1)")
        count("ru", len(w.rated))
    return st, expected


async def write(conn: Connection, tenant: str, w: Writes) -> None:
    """Write a group's decisions in one statement: new reservations and their holds, closed
    ones (holds lifted, used allowance drawn, paid units counted), transfers posted to the
    balances, rated records and `balance.updated` events. Every row it updates was locked by
    :func:`lock` (or is a reservation locked by :func:`read`), except the revenue and
    partner accounts the transfers credit, which are updated last, as offline rating does.

    Raises RuntimeError, leaving the transaction to be rolled back, if any of it did not
    happen exactly as decided."""
    allowances = sorted((k, d) for k, d in w.allowances.items() if d != [0, 0])
    pending = sorted((a, d) for a, d in w.pending.items() if d)
    st, expected = _write_statement(tenant, w, allowances, pending)
    row = await conn.fetchrow(st.sql(), *st.args)
    assert row is not None
    if list(row) != expected:
        raise RuntimeError(f"online charging wrote other than it decided: {st.counts} ="
                           f" {list(row)}, decided {expected}")


async def void(conn: Connection, reservations: Sequence[Reservation], state: str) -> None:
    """Lift the holds of locked pending reservations and close them as `state` (expired):
    allowance rows first, then accounts, each in key order."""
    lifted: dict[BucketKey, int] = {}
    pending: dict[str, int] = {}
    for r in reservations:
        for key, units in r.held_allowances():
            lifted[key] = lifted.get(key, 0) - units
        if r.pending_micros:
            account = customer_account(str(r.customer_id))
            pending[account] = pending.get(account, 0) - r.pending_micros
    row = await conn.fetchrow(
        "WITH k AS MATERIALIZED (SELECT (e->>0)::uuid AS s, e->>1 AS n, (e->>2)::date AS p,"
        "  (e->>3)::bigint AS u FROM jsonb_array_elements($1::text::jsonb) AS e),"
        " la AS MATERIALIZED (SELECT 1 FROM allowance_usage a JOIN k ON a.subscription_id = k.s"
        "  AND a.allowance = k.n AND a.period_start = k.p"
        "  ORDER BY a.subscription_id, a.allowance, a.period_start FOR UPDATE OF a),"
        " al AS (UPDATE allowance_usage a SET reserved = a.reserved + k.u FROM k"
        "  WHERE a.subscription_id = k.s AND a.allowance = k.n AND a.period_start = k.p"
        "  AND (SELECT count(*) FROM la) >= 0 RETURNING 1),"
        " m AS MATERIALIZED (SELECT e->>0 AS account, (e->>1)::bigint AS d"
        "  FROM jsonb_array_elements($2::text::jsonb) AS e),"
        " lm AS MATERIALIZED (SELECT 1 FROM ledger_accounts WHERE account_id IN"
        "  (SELECT account FROM m) AND (SELECT count(*) FROM al) >= 0"
        "  ORDER BY account_id FOR UPDATE),"
        " money AS (UPDATE ledger_accounts a SET pending_micros = a.pending_micros + m.d FROM m"
        "  WHERE a.account_id = m.account AND (SELECT count(*) FROM lm) >= 0 RETURNING 1),"
        " cl AS (UPDATE reservations SET state = $4, closed_at = now()"
        "  WHERE reservation_id = ANY($3::uuid[]) RETURNING 1)"
        " SELECT (SELECT count(*) FROM al), (SELECT count(*) FROM money),"
        "  (SELECT count(*) FROM cl)",
        json_rows([(*k, lifted[k]) for k in sorted(lifted)]),
        json_rows([(a, pending[a]) for a in sorted(pending)]),
        [r.reservation_id for r in reservations], state)
    assert row is not None
    if tuple(row) != (len(lifted), len(pending), len(reservations)):
        raise RuntimeError(f"void: (allowance rows, accounts, reservations) = {tuple(row)},"
                           f" expected {(len(lifted), len(pending), len(reservations))}")


async def expired(conn: Connection, limit: int) -> list[Reservation]:
    """Pending reservations past their validity, locked (those another transaction holds are
    skipped: it is committing or releasing them)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM reservations WHERE state = 'pending' AND expires_at < now()"
        " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
    return [Reservation(*r) for r in rows]
