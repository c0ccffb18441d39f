"""Offline rating end to end (JetStream → rate → PostgreSQL → ack) vs raw nats-py pull+ack of
the same messages, measured in the same run.

Besides wall-clock rates, each phase reports CPU time per event of the three processes that
share the machine: this (bench) process, which runs the consumer under test (for the rated
phase: the charging engine, plus this bench's backlog poll every 20 ms), the PostgreSQL server
(postmaster and all its children) and nats-server, read from /proc. Events per CPU-second of
the engine process is the "per core" figure of the goal: the engine scales out horizontally."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
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


def _proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and, with `children`, of its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: exited children
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(parent: int, name: str | None = None) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        command = stat.partition(" (")[2].rpartition(")")[0]
        parent_pid = int(stat.rpartition(")")[2].split()[1])
        if parent_pid == parent and (name is None or command == name):
            found.append(int(entry))
    return found


@dataclass
class CpuTimes:
    bench: float
    postgres: float
    nats: float


class CpuMeter:
    """CPU seconds used so far by this process, the PostgreSQL server and nats-server."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        nats = _children(os.getpid(), "nats-server")
        self.nats = nats[0] if nats else None

    @classmethod
    async def of(cls, owner_dsn: str) -> CpuMeter:
        conn = await asyncpg.connect(owner_dsn)
        try:
            data_dir = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        return cls(int((Path(data_dir) / "postmaster.pid").read_text().split()[0]))

    def read(self) -> CpuTimes:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        postgres = _proc_cpu(self.postmaster, children=True)
        for child in _children(self.postmaster):
            try:
                postgres += _proc_cpu(child)
            except OSError:  # exited between listing and reading: counted once reaped
                continue
        nats = _proc_cpu(self.nats) if self.nats is not None else float("nan")
        return CpuTimes(usage.ru_utime + usage.ru_stime, postgres, nats)


@dataclass
class Phase:
    rate: float
    """events per wall-clock second"""
    cpu: CpuTimes
    """CPU seconds per event"""


async def measured(meter: CpuMeter, count: int, run: object) -> Phase:
    assert asyncio.iscoroutine(run)
    before = meter.read()
    rate = await run
    after = meter.read()
    return Phase(rate, CpuTimes(*((a - b) / count for a, b in zip(
        (after.bench, after.postgres, after.nats), (before.bench, before.postgres, before.nats),
        strict=True))))


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


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
        meter = await CpuMeter.of(env.owner_dsn)
        load = os.getloadavg()[0]
        baseline = await measured(meter, EVENTS, raw_pull_ack(env.nc, tenant, EVENTS))
        lean = await measured(meter, EVENTS, lean_pull_ack(env, tenant, EVENTS))
        rated = await measured(meter, EVENTS, rated_rate(env, tenant, EVENTS))
    rows = [("baseline: raw nats-py pull + ack", baseline),
            ("for reference: pull + ack with the engine's puller, nothing rated", lean),
            ("Tollgate: pull → rate → PostgreSQL commit → ack", rated)]
    record("Offline rating", [
        f"{EVENTS:,} data events over {LINES:,} subscribers, batches of {BATCH}, one process;"
        f" load average {load:.1f} at the start (2 cores shared with everything else).",
        "",
        "| figure | events/s (wall clock) | µs CPU per event: bench process"
        " | PostgreSQL | nats-server |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {name} | {p.rate:,.0f} | {_us(p.cpu.bench)} | {_us(p.cpu.postgres)}"
          f" | {_us(p.cpu.nats)} |" for name, p in rows),
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| ratio, wall clock (goal ≥ 0.6) | {rated.rate / baseline.rate:.2f} |",
        f"| ratio to the engine's own pull + ack | {rated.rate / lean.rate:.2f} |",
        f"| events per CPU-second of the engine process (goal ≥ 15,000 per core)"
        f" | {1 / rated.cpu.bench:,.0f} |",
        f"| events per CPU-second of engine + PostgreSQL | "
        f"{1 / (rated.cpu.bench + rated.cpu.postgres):,.0f} |",
    ])


if __name__ == "__main__":
    asyncio.run(main())
