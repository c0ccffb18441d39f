"""Pull a durable JetStream consumer in batches, collecting messages in one plain callback.

nats-py's `PullSubscription.fetch` waits for each message of a batch with a task, a timer
and a queue read of its own: at tens of thousands of messages a second that alone is most of
a core. This puller sends the same pull requests (JetStream's wire API,
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with `batch`, `no_wait`, `expires`) from one
subscription whose callback appends to a list, and hands over what arrived.

Each request gets its own reply subject (`<inbox>.<n>`), so a status message (404 no
messages, 408 request expired, 409 …) is matched to the request it ends, and a late status of
an old request is ignored. Data messages arrive with their stream subject and a `$JS.ACK`
reply; status messages with neither, so a message that merely carries a `Status` header is
still a message (nats-py's fetch would discard it unacked).
"""

from __future__ import annotations

import asyncio
import json

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from nats.js.errors import NotFoundError

log = structlog.get_logger(__name__)

ENDED = ("404", "408")
"""Statuses that end a request normally: nothing (more) to deliver now, or it expired."""
HEARTBEAT = "100"
EXPIRES_MARGIN_S = 0.05
"""A lingering request expires this much before the fetch gives up waiting for it."""
PENDING_MSGS_LIMIT = 100_000
"""Messages the subscription may buffer before nats-py drops (slow consumer): far above
what a few outstanding requests can deliver."""


class BatchPuller:
    """Fetches batches of one durable pull consumer. Not for concurrent `fetch` calls."""

    def __init__(self, nc: Client, stream: str, consumer: str, api_prefix: str = "$JS.API"
                 ) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._buffer: list[Msg] = []
        self._requests = 0
        self._open: str | None = None
        """reply subject of the request still delivering, if any"""
        self._lingering = False
        self._remaining = 0
        """messages the open request may still deliver"""
        self._ended_by: str | None = None
        """status that ended the last request (None: it was filled, or is open)"""
        self._waiter: asyncio.Future[None] | None = None
        self._wake_on_message = False

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._subscription = await self._nc.subscribe(
            f"{self._inbox}.*", cb=self._on_message, pending_msgs_limit=PENDING_MSGS_LIMIT)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to `batch` messages: those delivered already, topped up with what the consumer
        has now; when it has nothing, the first messages to arrive within `wait_s`. Empty
        when none did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        if self._open is None and len(self._buffer) < batch:
            await self._request(batch - len(self._buffer), None)
            await self._wait(deadline, until_ended=True)
            if not self._buffer and self._open is None and self._ended_by in ENDED:
                expires = deadline - loop.time() - EXPIRES_MARGIN_S
                if expires > 0:
                    await self._request(batch, expires)
                    await self._wait(deadline, until_ended=False)
        elif not self._buffer:
            await self._wait(deadline, until_ended=False)
        taken = self._buffer[:batch]
        del self._buffer[:batch]
        if not taken and self._ended_by not in (None, *ENDED):
            # The consumer refuses requests (deleted, leader change, …): do not spin.
            log.warning("pull request refused", status=self._ended_by,
                        subject=self._next_subject)
            await asyncio.sleep(max(deadline - loop.time(), 0))
        return taken

    async def _request(self, batch: int, expires_s: float | None) -> None:
        self._requests += 1
        self._open = f"{self._inbox}.{self._requests}"
        self._lingering = expires_s is not None
        self._remaining = batch
        self._ended_by = None
        body: dict[str, int | bool] = {"batch": batch}
        if expires_s is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(expires_s * 1e9)
        await self._nc.publish(self._next_subject, json.dumps(body).encode(),
                               reply=self._open)

    async def _wait(self, deadline: float, *, until_ended: bool) -> None:
        """Until the open request ends (or, unless `until_ended`, a message arrives), or the
        deadline passes; a request still open then is given up (its late status ignored)."""
        loop = asyncio.get_running_loop()
        self._wake_on_message = not until_ended
        while self._open is not None and (until_ended or not self._buffer):
            left = deadline - loop.time()
            if left <= 0:
                self._open = None
                return
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, left)
            except TimeoutError:
                pass
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _on_message(self, msg: Msg) -> None:
        if msg.reply:  # a stream message: its reply subject is its $JS.ACK… ack subject
            self._buffer.append(msg)
            self._remaining -= 1
            if self._remaining <= 0 and self._open is not None:
                self._open = None
                self._wake()
            elif self._wake_on_message:
                self._wake()
            return
        status = (msg.headers or {}).get("Status")
        if status == HEARTBEAT or msg.subject != self._open:
            return
        self._open = None
        self._ended_by = status
        self._wake()


async def pull_consumer(nc: Client, js: JetStreamContext, stream: str,
                        config: ConsumerConfig) -> BatchPuller:
    """Create the durable consumer `config.durable_name` unless it exists (an existing one
    keeps its configuration, as with nats-py's `pull_subscribe`), and a started puller."""
    durable = config.durable_name
    assert durable, "a durable consumer needs a name"
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        config.name = durable
        await js.add_consumer(stream, config=config)
    puller = BatchPuller(nc, stream, durable)
    await puller.start()
    return puller
