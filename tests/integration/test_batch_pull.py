"""The batch puller against a real JetStream consumer: batches in stream order, partial
batches, nothing lost or redelivered once acked, a `Status` header is only a header."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from tollgate_core.bus.pull import BatchPuller, pull_consumer


async def consumer(nc: Client, js: JetStreamContext, tenant: str) -> BatchPuller:
    return await pull_consumer(nc, js, "USAGE", ConsumerConfig(
        durable_name=f"pull-{tenant}", filter_subject=f"tg.{tenant}.usage.>",
        ack_policy=AckPolicy.EXPLICIT, ack_wait=30))


async def test_batches_come_in_stream_order_and_acked_messages_stay_acked(
        nats_client: Client, js: JetStreamContext, tenant_name: str) -> None:
    subject = f"tg.{tenant_name}.usage.data"
    for i in range(7):
        # a published `Status` header must not make a message look like a pull status
        headers = {"Status": "404"} if i == 3 else None
        await js.publish(subject, f"m{i}".encode(), headers=headers)
    puller = await consumer(nats_client, js, tenant_name)
    try:
        first = await puller.fetch(5, 5.0)
        rest = await puller.fetch(5, 5.0)
        assert [m.data for m in first + rest] == [f"m{i}".encode() for i in range(7)]
        assert [m.subject for m in first + rest] == [subject] * 7
        assert first[3].headers == {"Status": "404"}
        for msg in first + rest:
            await msg.ack()
        await nats_client.flush()
        assert await puller.fetch(5, 0.3) == []  # nothing left, nothing redelivered
        info = await js.consumer_info("USAGE", f"pull-{tenant_name}")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await puller.stop()


async def test_a_waiting_fetch_returns_what_arrives_and_the_rest_comes_next(
        nats_client: Client, js: JetStreamContext, tenant_name: str) -> None:
    subject = f"tg.{tenant_name}.usage.voice"
    puller = await consumer(nats_client, js, tenant_name)
    try:
        waiting = asyncio.create_task(puller.fetch(10, 20.0))
        await js.publish(subject, b"late-1")
        got = await waiting
        await js.publish(subject, b"late-2")
        got += await puller.fetch(10, 20.0)  # from the same (lingering) request
        assert [m.data for m in got] == [b"late-1", b"late-2"]
        for msg in got:
            await msg.ack()
    finally:
        await puller.stop()


async def test_an_existing_consumer_is_bound_not_replaced(
        nats_client: Client, js: JetStreamContext, tenant_name: str) -> None:
    await js.publish(f"tg.{tenant_name}.usage.data", b"kept")
    first = await consumer(nats_client, js, tenant_name)
    delivered = await first.fetch(1, 5.0)
    await first.stop()
    second = await consumer(nats_client, js, tenant_name)  # same durable, e.g. a restart
    try:
        info = await js.consumer_info("USAGE", f"pull-{tenant_name}")
        assert info.num_ack_pending == 1  # the unacked delivery of the first is still there
        await delivered[0].ack()
        await nats_client.flush()
        assert await second.fetch(1, 0.3) == []
    finally:
        await second.stop()
