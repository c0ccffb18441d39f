"""Offline rating end to end (JetStream → rate → PostgreSQL → ack) vs raw nats-py pull+ack of
the same messages, measured in the same run."""

from __future__ import annotations

import asyncio
import time

from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from bench.common import (
    Env,
    analyze,
    environment,
    example_tenant,
    publish_usage,
    record,
    subscribers,
)
from tollgate_core.bus.pull import pull_consumer
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.engines.runner import tune_gc
from tollgate_core.settings import ChargingSettings

EVENTS = 50_000
LINES = 1_000
BATCH = 500


async def raw_pull_ack(env_nc: object, tenant: str, count: int) -> float:
    from nats.aio.client import Client

    assert isinstance(env_nc, Client)
    js = env_nc.jetstream()
    sub = await js.pull_subscribe(f"tg.{tenant}.usage.>", durable="baseline", stream="USAGE",
                                  config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                                        max_ack_pending=BATCH * 20))
    done = 0
    started = time.perf_counter()
    while done < count:
        for msg in await sub.fetch(BATCH, timeout=5):
            await msg.ack()
            done += 1
        await env_nc.flush()
    return done / (time.perf_counter() - started)


async def lean_pull_ack(env: Env, tenant: str, count: int) -> float:
    """The same pull + ack through the engine's own puller (bus/pull.py), nothing rated: how
    much of the baseline is nats-py's fetch."""
    js = env.nc.jetstream()
    puller = await pull_consumer(env.nc, js, "USAGE", ConsumerConfig(
        durable_name="lean", filter_subject=f"tg.{tenant}.usage.>",
        ack_policy=AckPolicy.EXPLICIT, max_ack_pending=BATCH * 20))
    done = 0
    started = time.perf_counter()
    while done < count:
        for msg in await puller.fetch(BATCH, 5):
            await msg.ack()
            done += 1
        await env.nc.flush()
    elapsed = time.perf_counter() - started
    await puller.stop()
    return done / elapsed


async def rated_rate(env: Env, tenant: str, count: int) -> float:
    """The engine's own loop (prefetch, rate, commit, ack) until the backlog is gone."""
    js = env.nc.jetstream()
    settings = ChargingSettings(tenant=tenant, database_url=env.app_dsn, nats_url=env.nats_url,
                                batch_max=BATCH)
    engine = ChargingEngine(settings, env.pool)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(engine.run(env.nc, js, stop))
    while True:
        await asyncio.sleep(0.02)
        try:
            info = await js.consumer_info("USAGE", engine.consumer)
        except NotFoundError:
            continue
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return count / elapsed


async def main() -> None:
    tune_gc()  # as the charging process does (engines/runner.py); the baseline runs with it too
    async with environment() as env:
        tenant = "bench"
        await example_tenant(env.pool, tenant)
        lines = await subscribers(env.pool, tenant, LINES)
        await analyze(env.owner_dsn)
        await publish_usage(env.nc, tenant, lines, EVENTS)
        baseline = await raw_pull_ack(env.nc, tenant, EVENTS)
        lean = await lean_pull_ack(env, tenant, EVENTS)
        rated = await rated_rate(env, tenant, EVENTS)
    record("Offline rating", [
        f"{EVENTS:,} data events over {LINES:,} subscribers, batches of {BATCH}, one process.",
        "",
        "| figure | events/s |",
        "| --- | --- |",
        f"| baseline: raw nats-py pull + ack | {baseline:,.0f} |",
        f"| for reference: pull + ack with the engine's puller, nothing rated | {lean:,.0f} |",
        f"| Tollgate: pull → rate → PostgreSQL commit → ack | {rated:,.0f} |",
        f"| ratio (goal ≥ 0.6) | {rated / baseline:.2f} |",
        f"| ratio to the engine's own pull + ack | {rated / lean:.2f} |",
    ])


if __name__ == "__main__":
    asyncio.run(main())
