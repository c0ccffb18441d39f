"""Live updates: one NATS subscription per API process fans domain events out to the
websocket subscribers of the event's tenant.

Queues are bounded: a subscriber that does not keep up loses its oldest updates (a balance
update supersedes the one before), never the process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Gauge

log = structlog.get_logger(__name__)
QUEUE_MAX = 100
LISTENERS = Gauge("tollgate_api_live_listeners",
                  "Live-update listeners (one per active websocket subscription)", ["tenant"])


class EventHub:
    def __init__(self) -> None:
        self._listeners: dict[tuple[str, str], set[asyncio.Queue[dict[str, Any]]]] = (
            defaultdict(set))
        self._subscription: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._subscription = await nc.subscribe("tg.*.evt.>", cb=self._dispatch)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()

    async def _dispatch(self, msg: Msg) -> None:
        parts = msg.subject.split(".", 3)  # tg . <tenant> . evt . <event>
        if len(parts) < 4:
            return
        listeners = self._listeners.get((parts[1], parts[3]))
        if not listeners:
            return
        try:
            data = json.loads(msg.data)["data"]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed domain event ignored", subject=msg.subject)
            return
        for queue in listeners:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(data)

    @contextlib.asynccontextmanager
    async def listen(self, tenant: str, event: str) -> AsyncIterator[
            asyncio.Queue[dict[str, Any]]]:
        """Receive the `data` of every `event` of `tenant` while inside the block."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        key = (tenant, event)
        self._listeners[key].add(queue)
        listeners = LISTENERS.labels(tenant)
        listeners.inc()
        try:
            yield queue
        finally:
            listeners.dec()
            self._listeners[key].discard(queue)
            if not self._listeners[key]:
                del self._listeners[key]
