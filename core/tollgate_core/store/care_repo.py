"""Customer care writes: consent history, orders, subscription ends, GDPR erasure."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tollgate_core.domain.care import ConsentPurpose, OrderState, OrderType
from tollgate_core.domain.events import DomainEvent
from tollgate_core.store import outbox
from tollgate_core.store.accounts_repo import SUBSCRIPTION_COLUMNS, SubscriptionRow
from tollgate_core.store.db import Connection


@dataclass(frozen=True, slots=True)
class ConsentRow:
    record_id: uuid.UUID
    customer_id: uuid.UUID
    purpose: str
    granted: bool
    channel: str
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class OrderRow:
    order_id: uuid.UUID
    customer_id: uuid.UUID
    order_type: str
    state: str
    items: list[dict[str, Any]]
    due_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def event_data(self) -> dict[str, Any]:
        """The `order.updated` payload (docs/events.md)."""
        return {"orderId": str(self.order_id), "customerId": str(self.customer_id),
                "type": self.order_type, "state": self.state, "items": self.items,
                "dueAt": self.due_at.isoformat() if self.due_at else None,
                "createdAt": self.created_at.isoformat(),
                "updatedAt": self.updated_at.isoformat()}


CONSENT_COLUMNS = "record_id, customer_id, purpose, granted, channel, recorded_by, recorded_at"
ORDER_COLUMNS = ("order_id, customer_id, order_type, state, items, due_at, created_at,"
                 " updated_at")


async def record_consents(conn: Connection, tenant: str, customer_id: uuid.UUID,
                          decisions: Sequence[tuple[ConsentPurpose, bool]], channel: str,
                          recorded_by: str) -> list[ConsentRow]:
    rows = await conn.fetch(
        "INSERT INTO consent_records (tenant_id, record_id, customer_id, purpose, granted,"
        " channel, recorded_by) SELECT $1, gen_random_uuid(), $2, p, g, $3, $4"
        " FROM unnest($5::text[], $6::boolean[]) AS d(p, g)"
        f" RETURNING {CONSENT_COLUMNS}",
        tenant, customer_id, channel, recorded_by, [p.value for p, _ in decisions],
        [g for _, g in decisions])
    return sorted((ConsentRow(**dict(r)) for r in rows), key=lambda c: c.purpose)


async def create_order(conn: Connection, tenant: str, customer_id: uuid.UUID,
                       order_type: OrderType, state: OrderState, items: list[dict[str, Any]],
                       due_at: datetime | None = None) -> OrderRow:
    """Insert an order and its `order.updated` event (outbox, same transaction)."""
    row = await conn.fetchrow(
        "INSERT INTO orders (tenant_id, order_id, customer_id, order_type, state, items, due_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ORDER_COLUMNS}",
        tenant, uuid.uuid4(), customer_id, order_type.value, state.value, items, due_at)
    assert row is not None
    order = OrderRow(**dict(row))
    await outbox.enqueue(conn, [DomainEvent.new(tenant, "order.updated", order.event_data())])
    return order


async def supersede_pending_orders(conn: Connection, tenant: str,
                                   subscription_ids: Sequence[uuid.UUID]) -> None:
    """Pending cancellations of these subscriptions are overtaken by a new order."""
    rows = await conn.fetch(
        "UPDATE orders SET state = 'cancelled', updated_at = clock_timestamp()"
        " WHERE state = 'pending' AND EXISTS (SELECT 1 FROM jsonb_array_elements(items) i"
        "  WHERE (i->>'subscriptionId')::uuid = ANY($1::uuid[]))"
        f" RETURNING {ORDER_COLUMNS}", list(subscription_ids))
    await outbox.enqueue(conn, [DomainEvent.new(tenant, "order.updated",
                                                OrderRow(**dict(r)).event_data())
                                for r in rows])


async def get_subscription(conn: Connection,
                           subscription_id: uuid.UUID) -> SubscriptionRow | None:
    row = await conn.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE subscription_id = $1",
        subscription_id)
    return None if row is None else SubscriptionRow(**dict(row))


async def line_subscriptions_for_update(conn: Connection, customer_id: uuid.UUID,
                                        subscriber: str) -> list[SubscriptionRow]:
    """Subscriptions of one line of a customer not cancelled yet (active, or suspended by
    dunning), locked in key order."""
    rows = await conn.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE customer_id = $1"
        " AND subscriber = $2 AND status <> 'cancelled' ORDER BY subscription_id FOR UPDATE",
        customer_id, subscriber)
    return [SubscriptionRow(**dict(r)) for r in rows]


async def end_subscriptions(conn: Connection, subscription_ids: Sequence[uuid.UUID],
                            ended_at: datetime, immediate: bool) -> None:
    """Immediate: cancelled now. Otherwise: stays active until `ended_at`, which the bill run
    (issue 6) turns into `cancelled` when it closes the period."""
    await conn.execute(
        "UPDATE subscriptions SET ended_at = $2,"
        " status = CASE WHEN $3 THEN 'cancelled' ELSE status END"
        " WHERE subscription_id = ANY($1::uuid[])", list(subscription_ids), ended_at, immediate)


async def erasure_of(conn: Connection, customer_id: uuid.UUID) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT erased_at FROM erasures WHERE customer_id = $1", customer_id)
    return value


async def erase_customer(conn: Connection, tenant: str, customer_id: uuid.UUID,
                         requested_by: str, name: str, email: str,
                         line_pseudonyms: dict[str, str]) -> datetime:
    """Replace the personal fields by pseudonyms and record the erasure. Ledger, rated usage,
    orders and consent history are keyed by ids and stay as they are."""
    erased_at: datetime = await conn.fetchval(
        "INSERT INTO erasures (tenant_id, customer_id, requested_by) VALUES ($1, $2, $3)"
        " RETURNING erased_at", tenant, customer_id, requested_by)
    await conn.execute(
        "UPDATE customers SET name = $2, email = $3, erased_at = $4 WHERE customer_id = $1",
        customer_id, name, email, erased_at)
    if line_pseudonyms:
        await erase_qod_sessions(conn, customer_id, line_pseudonyms)
        await conn.execute(
            "UPDATE subscriptions s SET subscriber = p.pseudonym"
            " FROM unnest($2::text[], $3::text[]) AS p(line, pseudonym)"
            " WHERE s.customer_id = $1 AND s.subscriber = p.line",
            customer_id, list(line_pseudonyms), list(line_pseudonyms.values()))
    await outbox.enqueue(conn, [DomainEvent.new(tenant, "customer.erased", {
        "customerId": str(customer_id), "erasedAt": erased_at.isoformat()})])
    return erased_at


async def erase_qod_sessions(conn: Connection, customer_id: uuid.UUID,
                             line_pseudonyms: dict[str, str]) -> int:
    """Pseudonymise the QoD session requests partners made for the customer's lines while
    the line was the customer's (requested within one of its subscriptions' [started_at,
    ended_at); a number held by someone else before or after is theirs): the session's
    MSISDN and the copy in its `oss.provision.request` outbox payload become the line's
    pseudonym, and the call's request digest (a hash of the MSISDN, reversible by trying
    every number) a random one. Must run before the subscriptions' lines are replaced.
    Returns the sessions changed."""
    row = await conn.fetchrow(
        "WITH matched AS ("
        " SELECT DISTINCT ON (q.session_id) q.session_id, p.pseudonym"
        " FROM qod_sessions q"
        " JOIN subscriptions s ON ltrim(s.subscriber, '+') = ltrim(q.msisdn, '+')"
        "  AND q.requested_at >= s.started_at"
        "  AND (s.ended_at IS NULL OR q.requested_at < s.ended_at)"
        " JOIN unnest($2::text[], $3::text[]) AS p(line, pseudonym) ON s.subscriber = p.line"
        " WHERE s.customer_id = $1 ORDER BY q.session_id, p.pseudonym),"
        " sessions AS (UPDATE qod_sessions q SET msisdn = m.pseudonym FROM matched m"
        "  WHERE q.session_id = m.session_id RETURNING q.session_id, q.call_id, q.msisdn),"
        " calls AS (UPDATE network_api_calls c"
        "  SET request_digest = encode(sha256(convert_to(gen_random_uuid()::text, 'UTF8')),"
        "  'hex') FROM sessions s WHERE c.call_id = s.call_id RETURNING c.call_id),"
        " relayed AS (UPDATE outbox o SET payload = convert_to(jsonb_set("
        "  convert_from(o.payload, 'UTF8')::jsonb, '{data,msisdn}', to_jsonb(s.msisdn))::text,"
        "  'UTF8') FROM sessions s WHERE o.id = s.session_id RETURNING o.id)"
        " SELECT (SELECT count(*) FROM sessions) AS sessions,"
        " (SELECT count(*) FROM calls) AS calls, (SELECT count(*) FROM relayed) AS relayed",
        customer_id, list(line_pseudonyms), list(line_pseudonyms.values()))
    assert row is not None
    return int(row["sessions"])


async def get_order(conn: Connection, order_id: uuid.UUID) -> OrderRow | None:
    row = await conn.fetchrow(f"SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1",
                              order_id)
    return None if row is None else OrderRow(**dict(row))


async def complete_due_cancellations(conn: Connection, tenant: str) -> int:
    """Cancellations whose time has come: subscriptions past `ended_at` become cancelled and
    their pending orders completed (with `order.updated`). Returns the orders completed."""
    await conn.execute(
        "UPDATE subscriptions SET status = 'cancelled' WHERE status <> 'cancelled'"
        " AND ended_at <= clock_timestamp()")
    rows = await conn.fetch(
        "UPDATE orders SET state = 'completed', updated_at = clock_timestamp()"
        f" WHERE state = 'pending' AND due_at <= clock_timestamp() RETURNING {ORDER_COLUMNS}")
    await outbox.enqueue(conn, [DomainEvent.new(tenant, "order.updated",
                                                OrderRow(**dict(r)).event_data())
                                for r in rows])
    return len(rows)
