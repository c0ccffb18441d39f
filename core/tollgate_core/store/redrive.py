"""Re-drive dead-lettered usage once its cause is fixed (a line ordered, an offer published)."""

from __future__ import annotations

import uuid

from tollgate_core.domain.usage import RejectReason
from tollgate_core.store import outbox
from tollgate_core.store.db import Pool, tenant_tx

REDRIVABLE = (RejectReason.UNKNOWN_SUBSCRIBER, RejectReason.NO_VALID_OFFER,
              RejectReason.NO_PRICE)
"""Reasons a later change can cure; malformed or invalid events must be corrected and resent
by their source instead."""
REDRIVE_MAX = 10_000


async def redrive(pool: Pool, tenant: str, consumer: str,
                  reasons: tuple[RejectReason, ...] = REDRIVABLE,
                  limit: int = REDRIVE_MAX) -> int:
    """Send open dead letters back to their subject; return how many.

    In one transaction: forget the events in the consumer's inbox (so they are rated afresh),
    mark the dead letters re-driven and put the original bytes in the outbox. An event that
    fails again is dead-lettered again with its new reason."""
    wanted = [r.value for r in reasons if r in REDRIVABLE]
    async with tenant_tx(pool, tenant) as conn:
        rows = await conn.fetch(
            "UPDATE dead_letters SET redriven_at = now() WHERE event_id IN ("
            " SELECT event_id FROM dead_letters WHERE redriven_at IS NULL"
            " AND reason = ANY($1::text[]) ORDER BY created_at LIMIT $2 FOR UPDATE)"
            " RETURNING event_id, subject, payload", wanted, limit)
        if not rows:
            return 0
        await conn.execute("DELETE FROM inbox WHERE consumer = $1 AND event_id = ANY($2::text[])",
                           consumer, [r["event_id"] for r in rows])
        await outbox.enqueue_raw(conn, tenant, [
            (uuid.uuid4(), r["subject"], r["payload"], {"Tollgate-Redriven": r["event_id"]})
            for r in rows])
        return len(rows)
