"""Live updates: one NATS subscription per API process fans domain events out to the
websocket subscribers of the event's tenant.

Listeners are indexed by tenant, event and customer: an event wakes only the subscribers of
its own customer (`data.customerId`) and those following the whole tenant, never the others.

Two kinds of listener:
- a **queue** (`listen`) receives each event's `data`; the subscription resolver turns it into
  a GraphQL result itself (in-process `schema.subscribe`, the legacy graphql-ws protocol);
- a **feed** (`subscribe`) is shared by every subscriber whose result cannot differ: same
  tenant, event, customer filter, audience and operation (document, variables). Its `render`
  runs once per event, in order, in a task of the feed's own, and every subscriber's outbox
  receives the same serialized payload (ADR 0009). The NATS callback never awaits a
  subscriber: it only routes events to queues, outboxes and feeds.

Queues and outboxes are bounded: a subscriber that does not keep up loses its oldest updates
(a balance update supersedes the one before), never the process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter, Gauge

log = structlog.get_logger(__name__)
QUEUE_MAX = 100
LISTENERS = Gauge("tollgate_api_live_listeners",
                  "Live-update listeners (one per active websocket subscription)", ["tenant"])
FEEDS = Gauge("tollgate_api_live_feeds",
              "Shared live-update executions: subscribers whose results cannot differ share "
              "one", ["tenant"])
RENDERS = Counter("tollgate_api_live_renders_total",
                  "Events rendered by shared live-update feeds (one per feed and event, "
                  "whatever its number of subscribers)", ["tenant"])

Render = Callable[[dict[str, Any]], Awaitable[str | None]]
"""The serialized result for one event's `data` (None: nothing to send)."""
Route = tuple[str, str]  # (tenant, event)


class Outbox:
    """One subscriber's pending payloads, oldest dropped beyond QUEUE_MAX."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_MAX)

    def put(self, payload: str) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(payload)

    async def get(self) -> str:
        return await self.queue.get()


class Feed:
    """Subscribers sharing one execution per event; events are rendered in order."""

    def __init__(self, tenant: str, render: Render) -> None:
        self.render = render
        self.outboxes: set[Outbox] = set()
        self._events: deque[dict[str, Any]] = deque(maxlen=QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None
        self._renders = RENDERS.labels(tenant)

    def publish(self, data: dict[str, Any]) -> None:
        self._events.append(data)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._events:
                data = self._events.popleft()
                try:
                    payload = await self.render(data)
                except Exception:
                    log.exception("live update not rendered", fields=sorted(data))
                    continue
                self._renders.inc()
                if payload is not None:
                    for outbox in self.outboxes:
                        outbox.put(payload)
        finally:
            self._task = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class EventHub:
    def __init__(self) -> None:
        # (tenant, event) → customer id (None: the whole tenant) → listeners
        self._queues: dict[Route, dict[str | None, set[asyncio.Queue[dict[str, Any]]]]] = {}
        self._feeds: dict[Route, dict[str | None, dict[Hashable, Feed]]] = {}
        self._subscription: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._subscription = await nc.subscribe("tg.*.evt.>", cb=self._dispatch)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        for by_customer in self._feeds.values():
            for feeds in by_customer.values():
                for feed in feeds.values():
                    feed.close()

    async def _dispatch(self, msg: Msg) -> None:
        parts = msg.subject.split(".", 3)  # tg . <tenant> . evt . <event>
        if len(parts) < 4:
            return
        route = (parts[1], parts[3])
        queues = self._queues.get(route)
        feeds = self._feeds.get(route)
        if not queues and not feeds:
            return
        try:
            data = json.loads(msg.data)["data"]
            customer = data.get("customerId")
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("malformed domain event ignored", subject=msg.subject)
            return
        keys = (None,) if customer is None else (customer, None)
        for key in keys:
            for queue in (queues or {}).get(key, ()):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(data)
            for feed in (feeds or {}).get(key, {}).values():
                feed.publish(data)

    @contextlib.contextmanager
    def _counted(self, tenant: str) -> Iterator[None]:
        listeners = LISTENERS.labels(tenant)
        listeners.inc()
        try:
            yield
        finally:
            listeners.dec()

    @contextlib.asynccontextmanager
    async def listen(self, tenant: str, event: str, customer: str | None = None
                     ) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """Receive the `data` of every `event` of `tenant` about `customer` (None: about
        any customer) while inside the block."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        by_customer = self._queues.setdefault((tenant, event), {})
        by_customer.setdefault(customer, set()).add(queue)
        try:
            with self._counted(tenant):
                yield queue
        finally:
            members = by_customer[customer]
            members.discard(queue)
            if not members:
                del by_customer[customer]
            if not by_customer:
                del self._queues[(tenant, event)]

    def has_feed(self, tenant: str, event: str, customer: str | None, key: Hashable) -> bool:
        return key in self._feeds.get((tenant, event), {}).get(customer, {})

    @contextlib.asynccontextmanager
    async def subscribe(self, tenant: str, event: str, customer: str | None, key: Hashable,
                        make_render: Callable[[], Render]) -> AsyncIterator[Outbox]:
        """Receive the rendered payload of every `event` of `tenant` about `customer` (None:
        about any customer) while inside the block. Subscribers with equal `key` share one
        feed: `make_render` is called for the first of them only, so `key` must determine
        everything the rendered result depends on."""
        feed = self._feeds.get((tenant, event), {}).get(customer, {}).get(key)
        if feed is None:
            feed = Feed(tenant, make_render())
            by_customer = self._feeds.setdefault((tenant, event), {})
            by_customer.setdefault(customer, {})[key] = feed
            FEEDS.labels(tenant).inc()
        by_customer = self._feeds[(tenant, event)]
        feeds = by_customer[customer]
        outbox = Outbox()
        feed.outboxes.add(outbox)
        try:
            with self._counted(tenant):
                yield outbox
        finally:
            feed.outboxes.discard(outbox)
            if not feed.outboxes:
                feed.close()
                del feeds[key]
                FEEDS.labels(tenant).dec()
                if not feeds:
                    del by_customer[customer]
                if not by_customer:
                    del self._feeds[(tenant, event)]
