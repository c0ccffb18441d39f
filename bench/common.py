"""Shared set-up for benchmarks: throwaway PostgreSQL and NATS, a tenant with the example
catalog and many subscribers."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import platform
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.client import Client

from tollgate_core import customer_service
from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.domain.usage import USAGE_EVENT_TYPE
from tollgate_core.local.apply import apply_resources, load_documents
from tollgate_core.local.servers import NatsServer, PostgresServer
from tollgate_core.resources import parse_resource
from tollgate_core.store.db import Pool, create_pool
from tollgate_core.store.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass
class Env:
    owner_dsn: str
    app_dsn: str
    nats_url: str
    pool: Pool
    nc: Client
    data_dir: Path
    """PostgreSQL's data directory"""


def _workdir() -> Path:
    base = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    base.chmod(0o755)  # PostgreSQL may run as `nobody`
    return base


@asynccontextmanager
async def environment() -> AsyncIterator[Env]:
    base = _workdir()
    # A new cluster fills each new 16 MB WAL segment with zeros before using it, stalling
    # every commit for up to ~0.4 s several times a minute under load; a running one reuses
    # the segments its checkpoints retire. The benchmarks measure the running one.
    postgres = PostgresServer(base / "pgdata", durable=True,
                              settings={"wal_init_zero": "off"})
    nats = NatsServer(base / "nats")
    postgres.start()
    nats.start()
    try:
        password = secrets.token_urlsafe(16)
        await migrate(postgres.dsn, password)
        pool = await create_pool(postgres.dsn_for("tollgate_app", password), max_size=10)
        nc = await connect(nats.url, name="bench")
        await ensure_streams(nc.jetstream())
        try:
            yield Env(postgres.dsn, postgres.dsn_for("tollgate_app", password), nats.url, pool,
                      nc, postgres.data_dir)
        finally:
            await nc.close()
            await pool.close()
    finally:
        nats.stop()
        postgres.destroy()


async def example_tenant(pool: Pool, tenant: str) -> None:
    resources = []
    for resource in load_documents(ROOT / "examples"):
        document = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        if document["kind"] == "Tenant":
            document["metadata"]["name"] = tenant
        else:
            document["spec"]["tenantRef"]["name"] = tenant
        resources.append(parse_resource(document))
    report = await apply_resources(pool, resources)  # type: ignore[arg-type]
    assert not report.errors, report.errors


async def subscribers(pool: Pool, tenant: str, count: int, payment_type: str = "postpaid",
                      offer: str = "mobile-m", top_up: str | None = None) -> list[str]:
    lines = []
    for i in range(count):
        line = f"4917{i:08d}"
        customer = await customer_service.register_customer(
            pool, tenant, name=f"C{i}", email=f"c{i}@example.de", payment_type=payment_type,
            customer_type="consumer", idempotency_key=f"reg-{line}")
        await customer_service.place_order(pool, tenant, customer_id=customer, offer=offer,
                                           subscriber=line, idempotency_key=f"ord-{line}")
        if top_up:
            await customer_service.top_up(pool, tenant, customer_id=customer, amount=top_up,
                                          idempotency_key=f"top-{line}")
        lines.append(line)
    return lines


async def analyze(owner_dsn: str) -> None:
    """Fresh tables have no statistics yet; production ones do."""
    import asyncpg

    conn = await asyncpg.connect(owner_dsn)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def usage_bytes(tenant: str, line: str, quantity: int, event_id: str | None = None) -> bytes:
    now = datetime.now(UTC).isoformat()
    return json.dumps({
        "specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "bench",
        "type": USAGE_EVENT_TYPE, "time": now, "tenant": tenant,
        "data": {"subscriber": line, "service": "data", "quantity": quantity, "unit": "bytes",
                 "startTime": now, "attributes": {}}}).encode()


async def publish_usage(nc: Client, tenant: str, lines: list[str], count: int,
                        quantity: int = 1_000_000) -> None:
    js = nc.jetstream()
    window: list[asyncio.Future[object]] = []
    for i in range(count):
        payload = usage_bytes(tenant, lines[i % len(lines)], quantity)
        window.append(asyncio.ensure_future(js.publish(f"tg.{tenant}.usage.data", payload)))
        if len(window) >= 1000:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def record(title: str, lines: list[str]) -> None:
    """Print a result block and replace its section in bench/RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = [f"## {title}", "", f"{stamp} · {machine()}", "", *lines, ""]
    print("\n".join(block))
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    sections = text.split("\n## ")
    kept = [s for s in sections[1:] if not s.startswith(title)]
    RESULTS.write_text("\n## ".join([sections[0].rstrip() + "\n", *kept]).rstrip() + "\n\n"
                       + "\n".join(block))


# --- open-loop load --------------------------------------------------------------------------

Call = Callable[[int], Awaitable[None]]
"""One request; its argument numbers it (a caller may spread requests over lines by it)."""

KEPT_UP = 0.95
"""A rate is sustained when calls complete at least this fast relative to it (see `Paced`)."""
STEP_S = 4.0


@dataclass
class Paced:
    """An open-loop run: calls started on schedule at `rate`, whatever the answers' pace."""

    rate: float
    latencies: list[float]
    """ms, from each call's scheduled start (a stalled server is not forgiven)"""
    elapsed_s: float
    """from the first scheduled start to the last completion"""

    @property
    def kept_up(self) -> bool:
        """The service completed the calls at (nearly) the rate they came: its backlog did
        not grow over the run. A queue growing by 5 % of the rate fails this, and so does a
        latency beyond ~5 % of the run (200 ms in a 4-s step), however steady."""
        return len(self.latencies) / self.elapsed_s >= KEPT_UP * self.rate


async def open_loop(call: Call, rate: float, seconds: float, offset: int = 0) -> Paced:
    """Start `call(offset + n)` at `rate` per second for `seconds`."""
    latencies: list[float] = []

    async def timed(n: int, scheduled: float) -> None:
        await call(offset + n)
        latencies.append((time.perf_counter() - scheduled) * 1000)

    tasks = []
    with client_without_pauses():
        start = time.perf_counter()
        for n in range(max(1, int(rate * seconds))):
            scheduled = start + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed(n, scheduled)))
        await asyncio.gather(*tasks)
        return Paced(rate, latencies, time.perf_counter() - start)


@contextmanager
def client_without_pauses() -> Iterator[None]:
    """No garbage collection in the load generator while it measures: a full collection of
    its many tasks and answers paused it for ~60 ms, which its latencies then counted
    against the service."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def sustainable_max(call: Call, hint: float, offset: int = 0) -> float:
    """The highest rate at which the service keeps up in open loop (`Paced.kept_up`), each
    rate tried for STEP_S. `hint` (a closed-loop maximum) bounds the search from above: a
    closed loop never offers more than the service answers, so it flatters a service whose
    latency grows with its backlog, and 70 % of it may not be sustainable at all."""
    tried = 0

    async def kept_up(rate: float) -> bool:
        nonlocal tried
        tried += 1
        return (await open_loop(call, rate, STEP_S, offset + tried * 10_000_000)).kept_up

    return await highest_rate(kept_up, hint)


async def highest_rate(kept_up: Callable[[float], Awaitable[bool]], hint: float,
                       steps: int = 5) -> float:
    """Bisection in log scale between a rate that `kept_up` and one that did not, starting
    from a quarter of `hint` and 1.2 × `hint` (halving the lower end until it is kept up):
    the highest rate found kept up, within ~5 % after 5 steps."""
    lo, hi = hint * 0.25, hint * 1.2
    while not await kept_up(lo):
        lo, hi = lo / 2, lo
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if await kept_up(mid):
            lo = mid
        else:
            hi = mid
    return lo


def quantile(values: list[float], q: int) -> float:
    """The q-th percentile (1–99)."""
    return statistics.quantiles(values, n=100)[q - 1]
