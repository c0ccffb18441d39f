"""`tollgate usage send`: publish synthetic usage events, as mediation would."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from rich.progress import Progress

from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.domain.events import usage_subject
from tollgate_core.domain.usage import UsageEvent, usage_envelope
from tollgate_core.resources.offer import SERVICE_UNITS, Service

WINDOW = 512  # publish acks in flight at once


def synthetic_event(tenant: str, subscriber: str, service: Service, quantity: int) -> UsageEvent:
    return UsageEvent(id=str(uuid.uuid4()), tenant=tenant, subscriber=subscriber,
                      service=service, quantity=quantity, unit=SERVICE_UNITS[service],
                      start_time=datetime.now(UTC), attributes={"cell": "262-01-1234-5678"})


async def send_usage(nats_url: str, tenant: str, subscriber: str, service: Service,
                     quantity: int, count: int, progress: Progress) -> list[str]:
    """Publish `count` events with Nats-Msg-Id = event id; return the ids."""
    import json

    nc = await connect(nats_url, name="tollgate-usage-send")
    ids: list[str] = []
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        task = progress.add_task(f"usage → tg.{tenant}.usage.{service}", total=count)
        pending: list[asyncio.Future[object]] = []
        for _ in range(count):
            event = synthetic_event(tenant, subscriber, service, quantity)
            ids.append(event.id)
            payload = json.dumps(usage_envelope(event, source="tollgate-cli")).encode()
            pending.append(asyncio.ensure_future(js.publish(
                usage_subject(tenant, service.value), payload,
                headers={"Nats-Msg-Id": event.id})))
            if len(pending) >= WINDOW:
                await asyncio.gather(*pending)
                progress.advance(task, len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        progress.advance(task, len(pending))
    finally:
        await nc.close()
    return ids
