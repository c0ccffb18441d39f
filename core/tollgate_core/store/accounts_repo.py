"""Customers, subscriptions and top-ups (the writes the API makes)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.ledger import (
    TOP_UP_FUNDING_ACCOUNT,
    AccountKind,
    TransferCode,
    customer_account,
    overage_account,
    transfer_id,
)
from tollgate_core.store import outbox
from tollgate_core.store.db import Connection


@dataclass(frozen=True, slots=True)
class CustomerRow:
    customer_id: uuid.UUID
    name: str | None
    email: str | None
    customer_type: str
    payment_type: str
    created_at: datetime
    erased_at: datetime | None = None
    timezone: str | None = None
    """The IANA timezone the account bills in; None: the tenant's."""


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    subscription_id: uuid.UUID
    customer_id: uuid.UUID
    offer: str
    subscriber: str
    status: str
    catalog_revision: int
    started_at: datetime
    ended_at: datetime | None = None


CUSTOMER_COLUMNS = ("customer_id, name, email, customer_type, payment_type, created_at,"
                    " erased_at, timezone")
SUBSCRIPTION_COLUMNS = ("subscription_id, customer_id, offer, subscriber, status,"
                        " catalog_revision, started_at, ended_at")


async def create_customer(conn: Connection, tenant: str, currency: str, name: str, email: str,
                          customer_type: str, payment_type: str,
                          timezone: str | None = None) -> CustomerRow:
    """`timezone`: the IANA timezone the account bills in (validated by the caller); None
    follows the tenant's."""
    customer_id = uuid.uuid4()
    row = await conn.fetchrow(
        "INSERT INTO customers (tenant_id, customer_id, name, email, customer_type,"
        " payment_type, timezone) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING created_at",
        tenant, customer_id, name, email, customer_type, payment_type, timezone)
    assert row is not None
    floor = 0 if payment_type == "prepaid" else None
    await conn.executemany(
        "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency, floor_micros)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(tenant, customer_account(str(customer_id)), AccountKind.CUSTOMER.value, currency, floor),
         (tenant, overage_account(str(customer_id)), AccountKind.RECEIVABLE.value, currency,
          None)])
    return CustomerRow(customer_id, name, email, customer_type, payment_type, row["created_at"],
                       timezone=timezone)


async def get_customer(conn: Connection, customer_id: uuid.UUID) -> CustomerRow | None:
    row = await conn.fetchrow(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = $1", customer_id)
    return None if row is None else CustomerRow(**dict(row))


async def subscriber_taken(conn: Connection, subscriber: str, customer_id: uuid.UUID) -> bool:
    """True when the MSISDN already has an active plan of another customer."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE subscriber = $1"
        " AND status = 'active' AND customer_id <> $2)", subscriber, customer_id))


async def create_subscription(conn: Connection, tenant: str, customer_id: uuid.UUID,
                              offer: str, subscriber: str, revision: int,
                              started_at: datetime) -> SubscriptionRow:
    subscription_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO subscriptions (tenant_id, subscription_id, customer_id, offer, subscriber,"
        " status, catalog_revision, started_at) VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
        tenant, subscription_id, customer_id, offer, subscriber, revision, started_at)
    return SubscriptionRow(subscription_id, customer_id, offer, subscriber, "active", revision,
                           started_at)


async def list_subscriptions(conn: Connection, customer_id: uuid.UUID) -> list[SubscriptionRow]:
    rows = await conn.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE customer_id = $1"
        " ORDER BY started_at, subscription_id", customer_id)
    return [SubscriptionRow(**dict(r)) for r in rows]


async def top_up(conn: Connection, tenant: str, customer_id: uuid.UUID, amount_micros: int,
                 currency: str, idempotency_key: str) -> int:
    """Credit a customer's balance from the top-up funding account; return the new balance."""
    account = customer_account(str(customer_id))
    tid = transfer_id(f"topup:{idempotency_key}", "credit")
    inserted = await conn.fetchval(
        "INSERT INTO transfers (tenant_id, transfer_id, debit_account, credit_account,"
        " amount_micros, currency, code, cause_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        tenant, tid, TOP_UP_FUNDING_ACCOUNT, account, amount_micros, currency,
        TransferCode.TOP_UP.value, idempotency_key)
    if inserted:
        await conn.execute(
            "UPDATE ledger_accounts SET balance_micros = balance_micros +"
            " CASE WHEN account_id = $2 THEN $3::bigint ELSE -$3::bigint END"
            " WHERE account_id = ANY(ARRAY[$1, $2])", TOP_UP_FUNDING_ACCOUNT, account,
            amount_micros)
    balance = int(await conn.fetchval(
        "SELECT balance_micros FROM ledger_accounts WHERE account_id = $1", account))
    if inserted:
        await outbox.enqueue(conn, [DomainEvent.new(tenant, "balance.updated", {
            "customerId": str(customer_id), "balanceMicros": balance, "currency": currency,
            "cause": "topUp"})])
    return balance
