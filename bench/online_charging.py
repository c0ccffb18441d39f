"""Online charging latency: reserve + commit at 70 % of the maximum sustainable rate, against
one NATS request plus one single-statement commit (baseline), both served by a separate
process, measured in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.aio.client import Client

from bench.common import Env, analyze, environment, example_tenant, record, subscribers

TENANT = "bench"
LINES = 200
PROBE_S = 5.0
MEASURE_S = 10.0
CLIENTS = 32
TOLLGATE = Path(sys.executable).parent / "tollgate"

Call = Callable[[int], Awaitable[None]]


def reserve_commit(nc: Client, lines: list[str]) -> Call:
    async def call(i: int) -> None:
        reserve = {"sessionId": f"s{i}", "requestNumber": 0, "subscriber": lines[i % len(lines)],
                   "service": "data", "units": 1_048_576}
        reply = json.loads((await nc.request(f"tg.{TENANT}.charge.reserve",
                                             json.dumps(reserve).encode(), timeout=10)).data)
        assert reply["result"] == "SUCCESS", reply
        commit = {"reservationId": reply["reservationId"], "usedUnits": 524_288}
        done = json.loads((await nc.request(f"tg.{TENANT}.charge.commit",
                                            json.dumps(commit).encode(), timeout=10)).data)
        assert done["result"] == "SUCCESS", done
    return call


def echo(nc: Client) -> Call:
    async def call(i: int) -> None:
        await nc.request("bench.echo", b'{"n": %d}' % i, timeout=10)
    return call


async def max_rate(call: Call, offset: int) -> float:
    """Closed loop: CLIENTS callers back to back for PROBE_S; calls per second.

    Caller k makes calls k, k + CLIENTS, k + 2 × CLIENTS, …: the calls in flight are on
    different lines, as in the open loop (calls k × 1,000,000 + j had every caller on the
    same line at the same time, 1,000,000 being a multiple of LINES)."""
    done = 0
    end = time.perf_counter() + PROBE_S

    async def caller(k: int) -> None:
        nonlocal done
        i = offset + k
        while time.perf_counter() < end:
            await call(i)
            i += CLIENTS
            done += 1

    await asyncio.gather(*[caller(k) for k in range(CLIENTS)])
    return done / PROBE_S


async def latencies_at(call: Call, rate: float, offset: int) -> list[float]:
    """Open loop: start calls at `rate` per second for MEASURE_S; each call's latency in ms."""
    results: list[float] = []
    tasks = []

    async def timed(i: int) -> None:
        started = time.perf_counter()
        await call(i)
        results.append((time.perf_counter() - started) * 1000)

    interval = 1 / rate
    start = time.perf_counter()
    for n in range(int(rate * MEASURE_S)):
        delay = start + n * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(offset + n)))
    await asyncio.gather(*tasks)
    return results


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


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
            figures = await measure(env, lines)
        finally:
            for proc in (engine, responder):
                proc.terminate()
                proc.wait(timeout=30)
    ours, base = figures
    record("Online charging (reserve + commit)", [
        f"Prepaid data sessions over {LINES} lines; the engine (`tollgate charging`) and the "
        "baseline responder each run in their own process; latencies measured at 70 % of each "
        f"side's maximum rate ({CLIENTS} closed-loop clients for {PROBE_S:.0f} s), open loop "
        f"for {MEASURE_S:.0f} s.",
        "",
        "| figure | max/s | rate at 70 % | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
        f"| baseline: 1 NATS request + 1 single-statement commit | {base[0]:,.0f} | "
        f"{base[1]:,.0f} | {base[2]:.2f} | {base[3]:.2f} |",
        f"| Tollgate: reserve + commit (2 requests) | {ours[0]:,.0f} | {ours[1]:,.0f} | "
        f"{ours[2]:.2f} | {ours[3]:.2f} |",
        f"| p99 ratio (goal ≤ 4×, and p99 ≤ 5 ms) | | | | {ours[3] / base[3]:.1f}× |",
    ])


async def wait_for_responders(env: Env, subjects: list[str]) -> None:
    for subject in subjects:
        for _ in range(200):
            try:
                await env.nc.request(subject, b"{}", timeout=1)
                break
            except Exception:  # no responders yet
                await asyncio.sleep(0.1)


async def measure(env: Env, lines: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    ours_call, base_call = reserve_commit(env.nc, lines), echo(env.nc)
    ours_max = await max_rate(ours_call, 0)
    base_max = await max_rate(base_call, 0)
    ours_lat = await latencies_at(ours_call, ours_max * 0.7, 10_000_000)
    base_lat = await latencies_at(base_call, base_max * 0.7, 10_000_000)
    return ((ours_max, ours_max * 0.7, p(ours_lat, 50), p(ours_lat, 99)),
            (base_max, base_max * 0.7, p(base_lat, 50), p(base_lat, 99)))


if __name__ == "__main__":
    asyncio.run(main())
