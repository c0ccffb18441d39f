"""Record threshold crossings once per owner, threshold and period; emit their events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.thresholds import ThresholdRule
from tollgate_core.store import outbox
from tollgate_core.store.db import Connection


@dataclass(frozen=True, slots=True)
class Crossing:
    owner_id: uuid.UUID  # subscription (allowance thresholds) or customer (balance thresholds)
    customer_id: uuid.UUID
    rule: ThresholdRule
    period_start: date
    level: dict[str, int | str]


async def record(conn: Connection, tenant: str, crossings: list[Crossing]) -> int:
    """Insert crossings not seen before in their period; emit `threshold.crossed` for those."""
    if not crossings:
        return 0
    rows = await conn.fetch(
        "INSERT INTO threshold_notifications (tenant_id, owner_id, threshold_key, period_start)"
        " SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::date[]) ON CONFLICT DO NOTHING"
        " RETURNING owner_id, threshold_key, period_start", tenant,
        [c.owner_id for c in crossings], [c.rule.key for c in crossings],
        [c.period_start for c in crossings])
    fresh = {(r["owner_id"], r["threshold_key"], r["period_start"]) for r in rows}
    events = []
    for c in crossings:
        if (c.owner_id, c.rule.key, c.period_start) not in fresh:
            continue
        fresh.discard((c.owner_id, c.rule.key, c.period_start))  # once, even if listed twice
        events.append(DomainEvent.new(tenant, "threshold.crossed", {
            "customerId": str(c.customer_id), "ownerId": str(c.owner_id),
            "threshold": c.rule.key, "periodStart": c.period_start.isoformat(),
            "upsellOffer": c.rule.upsell_offer, **c.level}))
    await outbox.enqueue(conn, events)
    return len(events)
