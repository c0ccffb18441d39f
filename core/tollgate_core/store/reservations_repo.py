"""Reservations of online charging and the allowance/balance holds they place."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from tollgate_core.store.db import Connection
from tollgate_core.store.rating_repo import BucketKey


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


_COLUMNS = ("reservation_id, session_id, request_number, subscription_id, customer_id, service,"
            " granted_units, allowance_units, pending_micros, catalog_revision, state,"
            " used_units, charged_micros, expires_at, price_factors, price_factor, created_at")


async def find_by_request(conn: Connection, session_id: str,
                          request_number: int) -> Reservation | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM reservations WHERE session_id = $1"
                              " AND request_number = $2", session_id, request_number)
    return None if row is None else Reservation(**dict(row))


async def lock(conn: Connection, reservation_id: uuid.UUID) -> Reservation | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM reservations WHERE reservation_id = $1"
                              " FOR UPDATE", reservation_id)
    return None if row is None else Reservation(**dict(row))


async def insert(conn: Connection, tenant: str, r: Reservation) -> None:
    await conn.execute(
        "INSERT INTO reservations (tenant_id, reservation_id, session_id, request_number,"
        " subscription_id, customer_id, service, granted_units, allowance_units, pending_micros,"
        " catalog_revision, state, expires_at, price_factors, price_factor, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, $13, $14, $15)",
        tenant, r.reservation_id, r.session_id, r.request_number, r.subscription_id,
        r.customer_id, r.service, r.granted_units, r.allowance_units, r.pending_micros,
        r.catalog_revision, r.expires_at, r.price_factors, r.price_factor, r.created_at)


async def close(conn: Connection, reservation_id: uuid.UUID, state: str,
                used_units: int | None = None, charged_micros: int | None = None) -> None:
    await conn.execute(
        "UPDATE reservations SET state = $2, used_units = $3, charged_micros = $4,"
        " closed_at = now() WHERE reservation_id = $1", reservation_id, state, used_units,
        charged_micros)


async def hold(conn: Connection, account: str, allowances: list[tuple[BucketKey, int]],
               pending_micros: int) -> None:
    """Place (positive) or lift (negative) holds on allowance units and money."""
    for (subscription_id, allowance, period_start), units in allowances:
        await conn.execute(
            "UPDATE allowance_usage SET reserved = reserved + $4 WHERE subscription_id = $1"
            " AND allowance = $2 AND period_start = $3", subscription_id, allowance,
            period_start, units)
    if pending_micros:
        await conn.execute("UPDATE ledger_accounts SET pending_micros = pending_micros + $2"
                           " WHERE account_id = $1", account, pending_micros)


async def use_allowances(conn: Connection, draws: list[tuple[BucketKey, int]]) -> None:
    for (subscription_id, allowance, period_start), units in draws:
        await conn.execute(
            "UPDATE allowance_usage SET used = used + $4 WHERE subscription_id = $1"
            " AND allowance = $2 AND period_start = $3", subscription_id, allowance,
            period_start, units)


async def expired(conn: Connection, limit: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT reservation_id FROM reservations WHERE state = 'pending' AND expires_at < now()"
        " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
    return [r["reservation_id"] for r in rows]
