"""Online charging latency: a reserve or a commit request at 70 % of the maximum sustainable
rate, against one NATS request plus one single-statement commit (baseline), both served by a
separate process, measured in the same run.

The maximum sustainable rate is found in open loop (`bench.common.sustainable_max`): the
highest rate at which the service keeps pace with the requests. The closed-loop maximum of
32 back-to-back clients only bounds that search: a closed loop never offers more than the
service answers, and on these 2 cores 70 % of it was not sustainable even for the baseline
(ADR 0007, "How latency is measured")."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client

from bench.common import (
    STEP_S,
    Call,
    Env,
    analyze,
    client_without_pauses,
    environment,
    example_tenant,
    open_loop,
    quantile,
    record,
    subscribers,
    sustainable_max,
)

TENANT = "bench"
LINES = 200
PROBE_S = 5.0
WINDOW_S = 5.0
WINDOWS = 4
"""Latencies are taken in WINDOWS windows of WINDOW_S per side and load, the sides in turn."""
CLIENTS = 32
LIGHT_REQUESTS_S = 100
"""A light load, the same number of requests per second for both sides: the floor of their
latency on this machine."""
TOLLGATE = Path(sys.executable).parent / "tollgate"


@dataclass
class Requests:
    """Latency of each request (ms), by operation."""

    by_operation: dict[str, list[float]] = field(default_factory=dict)

    def timed(self, operation: str, started: float) -> None:
        self.by_operation.setdefault(operation, []).append(
            (time.perf_counter() - started) * 1000)

    def all(self) -> list[float]:
        return [ms for values in self.by_operation.values() for ms in values]


def reserve_commit(nc: Client, lines: list[str], requests: Requests) -> Call:
    """A prepaid data session: reserve 1 MiB, commit half of it (two requests)."""
    async def call(i: int) -> None:
        reserve = {"sessionId": f"s{i}", "requestNumber": 0, "subscriber": lines[i % len(lines)],
                   "service": "data", "units": 1_048_576}
        started = time.perf_counter()
        reply = json.loads((await nc.request(f"tg.{TENANT}.charge.reserve",
                                             json.dumps(reserve).encode(), timeout=10)).data)
        requests.timed("reserve", started)
        assert reply["result"] == "SUCCESS", reply
        commit = {"reservationId": reply["reservationId"], "usedUnits": 524_288}
        started = time.perf_counter()
        done = json.loads((await nc.request(f"tg.{TENANT}.charge.commit",
                                            json.dumps(commit).encode(), timeout=10)).data)
        requests.timed("commit", started)
        assert done["result"] == "SUCCESS", done
    return call


def echo(nc: Client, requests: Requests) -> Call:
    async def call(i: int) -> None:
        started = time.perf_counter()
        await nc.request("bench.echo", b'{"n": %d}' % i, timeout=10)
        requests.timed("echo", started)
    return call


async def closed_loop_max(call: Call, offset: int) -> float:
    """CLIENTS callers back to back for PROBE_S; calls per second.

    Caller k makes calls k, k + CLIENTS, k + 2 × CLIENTS, …: the calls in flight are on
    different lines, as in the open loop."""
    done = 0
    end = time.perf_counter() + PROBE_S

    async def caller(k: int) -> None:
        nonlocal done
        i = offset + k
        while time.perf_counter() < end:
            await call(i)
            i += CLIENTS
            done += 1

    with client_without_pauses():
        await asyncio.gather(*[caller(k) for k in range(CLIENTS)])
    return done / PROBE_S


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@dataclass
class Side:
    """One side of the comparison: how a call is made, its maximum rates (calls/s: sessions
    for Tollgate), and per-request latencies at 70 % of its sustainable maximum and at the
    light load."""

    make: Callable[[Requests], Call]
    requests_per_call: int
    closed_max: float = 0.0
    sustained: float = 0.0
    at_70: Requests = field(default_factory=Requests)
    calls_ms: list[float] = field(default_factory=list)
    """whole calls (a session for Tollgate) at 70 %"""
    light: Requests = field(default_factory=Requests)
    window_p99s: list[float] = field(default_factory=list)
    """per-request p99 of each window at 70 %, in order"""

    @property
    def requests_at_70(self) -> float:
        """Requests per second at 70 % of the sustainable maximum."""
        return self.sustained * 0.7 * self.requests_per_call

    async def find_max(self, warmed: Callable[[], Awaitable[None]] | None = None) -> None:
        probe = Requests()
        self.closed_max = await closed_loop_max(self.make(probe), 0)
        if warmed is not None:
            await warmed()
        self.sustained = await sustainable_max(self.make(probe), self.closed_max,
                                               offset=100_000_000)

    async def window(self, k: int) -> None:
        """One window at 70 % of the sustainable maximum, then one at the light load."""
        window = Requests()
        paced = await open_loop(self.make(window), self.sustained * 0.7, WINDOW_S,
                                offset=1_000_000_000 + k * 10_000_000)
        self.calls_ms += paced.latencies
        self.window_p99s.append(quantile(window.all(), 99))
        for operation, values in window.by_operation.items():
            self.at_70.by_operation.setdefault(operation, []).extend(values)
        await open_loop(self.make(self.light), LIGHT_REQUESTS_S / self.requests_per_call,
                        WINDOW_S, offset=2_000_000_000 + k * 10_000_000)


async def main() -> None:
    async with environment() as env:
        await example_tenant(env.pool, TENANT)
        lines = await subscribers(env.pool, TENANT, LINES, payment_type="prepaid",
                                  top_up="100000.00")
        await analyze(env.owner_dsn)
        engine = spawn([str(TOLLGATE), "charging", "--tenant", TENANT, "--metrics-port", "0"],
                       {"TOLLGATE_DATABASE_URL": env.app_dsn,
                        "TOLLGATE_NATS_URL": env.nats_url,
                        "TOLLGATE_LOG_LEVEL": "WARNING"})
        responder = spawn([sys.executable, "-m", "bench.echo_responder", "bench.echo",
                           env.owner_dsn, env.nats_url], {})
        try:
            await wait_for_responders(env, ["bench.echo", f"tg.{TENANT}.charge.reserve"])
            ours = Side(lambda r: reserve_commit(env.nc, lines, r), 2)
            base = Side(lambda r: echo(env.nc, r), 1)
            await ours.find_max(lambda: analyze(env.owner_dsn))
            await base.find_max()
            for k in range(WINDOWS):  # in turn: both sides meet the disk's stalls alike
                await ours.window(k)
                await base.window(k)
            disk = paced_fsyncs(ours.requests_at_70, WINDOW_S * WINDOWS, env.data_dir)
        finally:
            for proc in (engine, responder):
                proc.terminate()
                proc.wait(timeout=30)
    record("Online charging (reserve + commit)", report(ours, base, disk))


def paced_fsyncs(rate: float, seconds: float, directory: Path) -> list[float]:
    """The disk alone: an 8 KiB write and fdatasync started at `rate` per second, as a
    commit's WAL flush is, in the PostgreSQL data directory's file system; each latency (ms)
    from its scheduled start. Shows the stalls every durable commit on this machine sees."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    latencies: list[float] = []
    block = b"\0" * 8192
    try:
        start = time.perf_counter()
        for n in range(int(rate * seconds)):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            os.pwrite(fd, block, (n % 1024) * 8192)
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - scheduled) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return latencies


def report(ours: Side, base: Side, disk: list[float]) -> list[str]:
    def row(name: str, side: Side, values: list[float], unit: str = "") -> str:
        return (f"| {name} | {side.closed_max:,.0f}{unit} | {side.sustained:,.0f}{unit} | "
                f"{side.sustained * 0.7:,.0f}{unit} | {quantile(values, 50):.2f} | "
                f"{quantile(values, 99):.2f} |")

    base_p99 = quantile(base.at_70.all(), 99)
    ours_p99 = quantile(ours.at_70.all(), 99)
    return [
        f"Prepaid data sessions (reserve 1 MiB, commit half) over {LINES} lines; the engine "
        "(`tollgate charging`) and the baseline responder each run in their own process. Each "
        "side's maximum sustainable rate is the highest open-loop rate it keeps pace with "
        f"(≥ 95 % of the offered rate completed, in {STEP_S:.0f}-s steps, bisected below {CLIENTS} "
        f"closed-loop clients' maximum); latencies are then taken open loop at 70 % of it and "
        f"at a light load, in {WINDOWS} windows of {WINDOW_S:.0f} s per side and load, the "
        "sides in turn (so both meet the disk's stalls alike): each request from its sending to "
        "its answer, a whole session from its scheduled start. The tables are analyzed after "
        "the closed-loop probe, as autovacuum would have done: statistics taken while "
        "`reservations` was empty plan its look-ups as scans.",
        "",
        "| figure | closed-loop max | sustainable max | rate at 70 % | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
        row("baseline: 1 NATS request + 1 single-statement commit", base, base.at_70.all()),
        row("Tollgate: a reserve or a commit request", ours,
            ours.at_70.all(), " sessions"),
        row("… reserve", ours, ours.at_70.by_operation["reserve"], " sessions"),
        row("… commit", ours, ours.at_70.by_operation["commit"], " sessions"),
        row("… a whole session (reserve + commit)", ours, ours.calls_ms, " sessions"),
        "",
        "p99 of each window at 70 %, in order: baseline "
        f"{', '.join(f'{ms:.1f}' for ms in base.window_p99s)} ms; Tollgate "
        f"{', '.join(f'{ms:.1f}' for ms in ours.window_p99s)} ms.",
        "",
        f"At a light {LIGHT_REQUESTS_S} requests/s (the latency floor here): baseline p50 "
        f"{quantile(base.light.all(), 50):.2f} ms, p99 {quantile(base.light.all(), 99):.2f} ms; "
        f"Tollgate p50 {quantile(ours.light.all(), 50):.2f} ms, p99 "
        f"{quantile(ours.light.all(), 99):.2f} ms.",
        "",
        f"The disk alone, in the same run: an 8 KiB write + fdatasync paced at "
        f"{ours.requests_at_70:,.0f}/s (the requests/s of Tollgate's 70 % row) for "
        f"{WINDOW_S * WINDOWS:.0f} s: p50 {quantile(disk, 50):.2f} ms, "
        f"p99 {quantile(disk, 99):.2f} ms, "
        f"max {max(disk):.1f} ms, {sum(1 for ms in disk if ms > 5)} of {len(disk):,} over 5 ms. "
        "Every durable commit waits for such a flush (group commit shares one among the "
        "commits waiting together).",
        "",
        "| goal | value |",
        "| --- | --- |",
        f"| request p99 ≤ 5 ms | {ours_p99:.2f} ms |",
        f"| request p99 ≤ 4× the baseline's | {ours_p99 / base_p99:.1f}× |",
    ]


async def wait_for_responders(env: Env, subjects: list[str]) -> None:
    for subject in subjects:
        for _ in range(200):
            try:
                await env.nc.request(subject, b"{}", timeout=1)
                break
            except Exception:  # no responders yet
                await asyncio.sleep(0.1)


if __name__ == "__main__":
    asyncio.run(main())
