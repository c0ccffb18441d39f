"""The chainer: numbers committed audit events and links them by hash, off the hot path.

Writers only append captured events (a trigger in their own transaction); they never read or
lock the chain. The chainer of a tenant, in one transaction: locks the head row, reads the
committed events that have no chain position yet (in insertion order), gives them the next
positions and hashes, moves the head, and writes an `audit.chained` event to the outbox (so
the head hash is also recorded outside PostgreSQL, in JetStream: an anchor to compare with).

A writer whose transaction commits after a later-numbered one is not skipped: its events are
simply invisible until it commits and are chained by a later round, at later positions. The
chain order is therefore the order in which events became visible to the chainer, which is
what makes chaining safe without waiting for gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import asyncpg
import structlog

from tollgate_core.assurance.chain import AuditRecord, genesis_hash, next_hash
from tollgate_core.domain.events import DomainEvent
from tollgate_core.store import audit_repo, outbox
from tollgate_core.store.db import Pool, tenant_tx

log = structlog.get_logger(__name__)

CHAIN_BATCH_MAX = 5_000


@dataclass(frozen=True, slots=True)
class ChainRound:
    chained: int
    head_sequence: int
    head_hash: bytes


async def chain_once(pool: Pool, tenant: str, batch_max: int = CHAIN_BATCH_MAX) -> ChainRound:
    """Chain up to `batch_max` pending events of `tenant` in one transaction."""
    async with tenant_tx(pool, tenant) as conn:
        head = await audit_repo.lock_head(conn, tenant, genesis_hash(tenant))
        pending = await audit_repo.unchained(conn, tenant, batch_max)
        if not pending:
            return ChainRound(0, head.sequence, head.hash)
        sequences, hashes = [], []
        current = head.hash
        for offset, event in enumerate(pending, start=1):
            sequence = head.sequence + offset
            current = next_hash(current, AuditRecord(tenant, sequence, event.kind,
                                                     event.entity_id, event.digest,
                                                     event.recorded_at))
            sequences.append(sequence)
            hashes.append(current)
        new_head = audit_repo.Head(sequences[-1], current)
        await audit_repo.append(conn, tenant, [e.event_no for e in pending], sequences, hashes,
                                new_head)
        await outbox.enqueue(conn, [DomainEvent.new(tenant, "audit.chained", {
            "fromSequence": head.sequence + 1, "toSequence": new_head.sequence,
            "headHash": new_head.hash.hex()})])
    return ChainRound(len(pending), new_head.sequence, new_head.hash)


async def chain_all(pool: Pool, tenant: str, batch_max: int = CHAIN_BATCH_MAX) -> ChainRound:
    """Chain until nothing committed is pending; return the total chained and the head."""
    total = 0
    while True:
        round_ = await chain_once(pool, tenant, batch_max)
        total += round_.chained
        if round_.chained < batch_max:
            return ChainRound(total, round_.head_sequence, round_.head_hash)


async def chain_forever(pool: Pool, tenant: str, stop: asyncio.Event,
                        interval_s: float = 1.0) -> None:
    """Chain every `interval_s` until `stop` is set (the runtime's background task)."""
    while not stop.is_set():
        try:
            chained = await chain_all(pool, tenant)
            if chained.chained:
                log.debug("audit events chained", tenant=tenant, count=chained.chained,
                          head=chained.head_sequence)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("audit chaining failed, will retry", tenant=tenant, error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
