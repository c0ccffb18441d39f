"""Transactional outbox: events written with the change, relayed to JetStream afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import nats.errors
import structlog
from nats.js import JetStreamContext

from tollgate_core.domain.events import DomainEvent
from tollgate_core.store.db import Connection, Pool, tenant_tx

log = structlog.get_logger(__name__)

RELAY_BATCH_MAX = 500


async def enqueue(conn: Connection, events: Sequence[DomainEvent]) -> None:
    """Write events in the caller's transaction."""
    if not events:
        return
    await conn.execute(
        "INSERT INTO outbox (tenant_id, id, subject, payload)"
        " SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bytea[])",
        [e.tenant for e in events], [e.id for e in events], [e.subject for e in events],
        [e.to_bytes() for e in events],
    )


RawMessage = tuple[uuid.UUID, str, bytes, dict[str, str]]


async def enqueue_raw(conn: Connection, tenant: str, rows: Sequence[RawMessage]) -> None:
    """Write pre-built messages (id, subject, payload, headers), e.g. dead letters."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO outbox (tenant_id, id, subject, payload, headers)"
        " SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::bytea[], $5::jsonb[])",
        tenant, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        [r[3] for r in rows],
    )


async def relay_once(pool: Pool, js: JetStreamContext, tenant: str) -> int:
    """Publish pending outbox rows with Nats-Msg-Id = outbox id; return how many were sent."""
    async with tenant_tx(pool, tenant) as conn:
        rows = await conn.fetch(
            "SELECT id, subject, payload, headers FROM outbox WHERE published_at IS NULL"
            " ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED", RELAY_BATCH_MAX)
        if not rows:
            return 0
        acks = [
            js.publish(r["subject"], r["payload"],
                       headers={**(r["headers"] or {}), "Nats-Msg-Id": str(r["id"])})
            for r in rows
        ]
        await asyncio.gather(*acks)
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])",
                           [r["id"] for r in rows])
        return len(rows)


async def relay_forever(pool: Pool, js: JetStreamContext, tenant: str, wake: asyncio.Event,
                        idle_s: float = 1.0) -> None:
    """Relay until cancelled; `wake` is set by writers to skip the idle wait."""
    while True:
        try:
            while await relay_once(pool, js, tenant):
                pass
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            log.warning("outbox relay failed, will retry", tenant=tenant, error=str(exc))
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=idle_s)
