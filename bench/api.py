"""GraphQL API benchmarks, each against a baseline taken in the same run.

(a) The customer dashboard query (profile, balance, allowances, subscriptions, the last 20
    rated usage records, the last 3 invoices with their lines) over HTTP against
    `tollgate api` in its own process, with a closed-loop client on keep-alive connections,
    versus the same query executed in-process with the same strawberry schema
    (`schema.execute`, parser and validation caches on) over the same PostgreSQL. Latency is
    also measured open loop at 70 % of the HTTP maximum.
(b) Fan-out: one `evt.balance.updated` NATS event to 1,000 graphql-transport-ws subscribers
    of `balanceChanged`, publish → each subscriber's `next` message, versus a bare
    `websockets` server forwarding the NATS message to 1,000 plain websocket clients.

`API_BENCH=fanout` (or `dashboard`) runs one part only; the other part's figures are carried
over from bench/RESULTS.md, with the date they were measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets
from nats.js.errors import NotFoundError
from websockets.asyncio.client import ClientConnection

from bench.common import (
    RESULTS,
    STEP_S,
    Call,
    Env,
    analyze,
    client_without_pauses,
    environment,
    example_tenant,
    open_loop,
    publish_usage,
    quantile,
    record,
    sustainable_max,
)
from tollgate_api.app import open_pool
from tollgate_api.auth import Principal, TokenVerifier
from tollgate_api.context import Context
from tollgate_api.live import EventHub
from tollgate_api.schema import build_schema
from tollgate_core import customer_service
from tollgate_core.billing.run import bill_run, last_closed_period
from tollgate_core.domain.billing import local_midnight
from tollgate_core.domain.events import DomainEvent
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.local.servers import free_port
from tollgate_core.settings import ChargingSettings
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx

TENANT = "bench"
CUSTOMERS = 200
USAGE_PER_CUSTOMER = 25
INVOICES_PER_CUSTOMER = 4
WORKERS = 8
WARMUP_S = 2.0
MEASURE_S = 10.0
SUBSCRIBERS = 1_000
FANOUT_EVENTS = 20
TOLLGATE = Path(sys.executable).parent / "tollgate"
ISSUER = "tollgate-dev"  # what `tollgate api` verifies

DASHBOARD = """query Dashboard {
  me {
    id name email customerType paymentType
    balance { balance { amount amountMicros currency } overage { amount currency } }
    allowances { name periodStart quantity used remaining }
    subscriptions { id offerId status catalogRevision }
    usage(first: 20) {
      edges { node { eventId service quantity allowanceUnits chargeableUnits
                     charge { amount currency } catalogRevision startTime } }
      pageInfo { hasNextPage endCursor }
    }
    invoices(first: 3) {
      edges { node { id billNo kind state billDate paymentDueDate
                     billingPeriod { start end }
                     amountDue { amount currency } remainingAmount { amount currency }
                     lines { type name net { amount currency } } } }
    }
  }
}"""
BALANCE = ("subscription Balance($id: UUID!) { balanceChanged(customerId: $id) {"
           " customerId cause balance { amountMicros currency } } }")


@dataclass
class Figures:
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float | None = None
    """CPU time (user + system) of the `tollgate api` process per query."""


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def with_cpu(pid: int, load: Awaitable[tuple[float, list[float]]]) -> Figures:
    """`load`'s figures, with the CPU the process `pid` spent per query meanwhile."""
    before = process_cpu_s(pid)
    rate, latencies = await load
    after = process_cpu_s(pid)
    measured = figures(rate, latencies)
    if before is not None and after is not None and latencies:
        measured.cpu_ms = (after - before) / len(latencies) * 1000
    return measured


# --- data ------------------------------------------------------------------------------------

async def customers(pool: Pool, count: int) -> list[tuple[str, str]]:
    """`count` postpaid customers on mobile-m: (customer id, line)."""
    made = []
    for i in range(count):
        line = f"4917{i:08d}"
        customer = await customer_service.register_customer(
            pool, TENANT, name=f"Customer {i}", email=f"c{i}@example.de",
            payment_type="postpaid", customer_type="consumer", idempotency_key=f"reg-{line}")
        await customer_service.place_order(pool, TENANT, customer_id=customer,
                                           offer="mobile-m", subscriber=line,
                                           idempotency_key=f"ord-{line}")
        made.append((str(customer), line))
    return made


async def bill(env: Env, periods: int) -> None:
    """`periods` invoices per customer: their subscriptions are moved back to before the
    first of the last `periods` closed bill periods, and each period is billed."""
    async with tenant_tx(env.pool, TENANT, readonly=True) as conn:
        spec = await catalog_repo.get_tenant(conn, TENANT)
    assert spec is not None
    billed = [last_closed_period(datetime.now(UTC), spec)]
    while len(billed) < periods:
        billed.insert(0, billed[0].previous())
    started = local_midnight(billed[0].start, spec.timezone)
    conn = await asyncpg.connect(env.owner_dsn)
    try:
        await conn.execute("UPDATE subscriptions SET started_at = $2 WHERE tenant_id = $1",
                           TENANT, started)
    finally:
        await conn.close()
    for period in billed:
        await bill_run(env.pool, TENANT, period)


async def rate_all(env: Env) -> None:
    """Run the charging engine until every published usage event is rated."""
    js = env.nc.jetstream()
    settings = ChargingSettings(tenant=TENANT, database_url=env.app_dsn, nats_url=env.nats_url)
    engine = ChargingEngine(settings, env.pool)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(env.nc, js, stop))
    while True:
        await asyncio.sleep(0.1)
        try:
            info = await js.consumer_info("USAGE", engine.consumer)
        except NotFoundError:
            continue
        if info.num_pending == 0 and info.num_ack_pending == 0:
            break
    stop.set()
    await task


# --- HTTP client: keep-alive HTTP/1.1 on raw streams, so the client costs little -------------

class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def http_request(port: int, token: str, query: str) -> bytes:
    body = json.dumps({"query": query}).encode()
    head = (f"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Accept: application/graphql-response+json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def check_http(status: int, body: bytes) -> None:
    if status != 200 or b'"errors"' in body:
        raise AssertionError(f"dashboard query failed: HTTP {status} {body[:300]!r}")


# --- load shapes -----------------------------------------------------------------------------

Worker = Callable[[], Awaitable[tuple[Call, Callable[[], None]]]]


async def closed_loop(make_worker: Worker, seconds: float, workers: int = WORKERS
                      ) -> tuple[float, list[float]]:
    """`workers` callers back to back for `seconds`: requests/s and each latency in ms."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def run(k: int) -> None:
        call, close = await make_worker()
        i = k
        try:
            while time.perf_counter() < end:
                started = time.perf_counter()
                await call(i)
                latencies.append((time.perf_counter() - started) * 1000)
                i += workers
        finally:
            close()

    with client_without_pauses():
        started = time.perf_counter()
        await asyncio.gather(*[run(k) for k in range(workers)])
        return len(latencies) / (time.perf_counter() - started), latencies


def http_call(port: int, requests: list[bytes]) -> tuple[Call, Callable[[], None]]:
    """A request for an open loop: each on an idle keep-alive connection, opened when none
    is; and what closes them all."""
    idle: list[Connection] = []
    opened: list[Connection] = []

    async def call(n: int) -> None:
        request = requests[n % len(requests)]
        connection = idle.pop() if idle else None
        try:
            if connection is None:
                raise ConnectionError("no idle connection")
            answer = await connection.send(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            # none idle, or the server closed an idle one (keep-alive timeout): a new one
            connection = await Connection.open(port)
            opened.append(connection)
            answer = await connection.send(request)
        check_http(*answer)
        idle.append(connection)

    def close() -> None:
        for connection in opened:
            connection.close()
    return call, close


# --- (a) the dashboard -----------------------------------------------------------------------

def figures(rate: float, latencies: list[float]) -> Figures:
    return Figures(rate, quantile(latencies, 50), quantile(latencies, 99))


async def dashboard(env: Env, port: int, api_pid: int, verifier: TokenVerifier,
                    people: list[tuple[str, str]]) -> dict[str, Figures]:
    """Closed loop with WORKERS and with one client, in-process and over HTTP; then the HTTP
    maximum sustainable rate (open loop) and latency at 70 % of it. Over HTTP, the API
    process's CPU per query."""
    tokens = [verifier.mint(TENANT, customer, ["customer"]) for customer, _ in people]
    requests = [http_request(port, token, DASHBOARD) for token in tokens]

    async def http_worker() -> tuple[Call, Callable[[], None]]:
        connection = await Connection.open(port)

        async def call(i: int) -> None:
            check_http(*await connection.send(requests[i % len(requests)]))
        return call, connection.close

    schema = build_schema(introspection=False)
    pool = await open_pool(env.app_dsn)  # the API process's pool
    hub = EventHub()
    principals = [Principal(TENANT, customer, frozenset({"customer"})) for customer, _ in people]

    async def in_process_worker() -> tuple[Call, Callable[[], None]]:
        async def call(i: int) -> None:
            context = Context(pool=pool, hub=hub, caller=principals[i % len(principals)])
            result = await schema.execute(DASHBOARD, context_value=context)
            if result.errors:
                raise AssertionError(f"dashboard query failed in-process: {result.errors}")
        return call, lambda: None

    results: dict[str, Figures] = {}
    try:
        sample = await in_process_worker()
        await sample[0](0)  # the query is valid against the schema
        await closed_loop(in_process_worker, WARMUP_S)
        results["base"] = figures(*await closed_loop(in_process_worker, MEASURE_S))
        results["base_1"] = figures(*await closed_loop(in_process_worker, MEASURE_S, 1))
    finally:
        await pool.close()
    await closed_loop(http_worker, WARMUP_S)
    results["http"] = await with_cpu(api_pid, closed_loop(http_worker, MEASURE_S))
    results["http_1"] = await with_cpu(api_pid, closed_loop(http_worker, MEASURE_S, 1))
    call, close = http_call(port, requests)
    try:
        sustained = await sustainable_max(call, results["http"].rate, offset=1_000_000)
        results["http_max"] = Figures(sustained, float("nan"), float("nan"))

        async def at_70() -> tuple[float, list[float]]:
            return sustained * 0.7, (await open_loop(call, sustained * 0.7, MEASURE_S)).latencies

        results["http_70"] = await with_cpu(api_pid, at_70())
    finally:
        close()
    return results


# --- (b) fan-out -----------------------------------------------------------------------------

class FanOut:
    """Receivers on SUBSCRIBERS websockets; latency of each event to each of them."""

    def __init__(self, sequence_of: Callable[[dict[str, Any]], int | None]) -> None:
        self.sequence_of = sequence_of
        self.published: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.complete: dict[int, asyncio.Event] = {}
        self.latencies: list[float] = []

    async def receive(self, ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.perf_counter()
            seq = self.sequence_of(json.loads(raw))
            if seq is None or seq not in self.published:
                continue
            self.latencies.append((now - self.published[seq]) * 1000)
            self.counts[seq] = self.counts.get(seq, 0) + 1
            if self.counts[seq] == SUBSCRIBERS:
                self.complete[seq].set()

    async def run(self, env: Env, subject: str, customer: str) -> list[float]:
        for seq in range(1, FANOUT_EVENTS + 1):
            self.complete[seq] = asyncio.Event()
            event = DomainEvent.new(TENANT, "balance.updated", {
                "customerId": customer, "balanceMicros": seq, "currency": "EUR",
                "cause": "bench"})
            self.published[seq] = time.perf_counter()
            await env.nc.publish(subject, event.to_bytes())
            await env.nc.flush()
            await asyncio.wait_for(self.complete[seq].wait(), 60)
            await asyncio.sleep(0.2)  # the next event starts from quiet
        return self.latencies


async def connect_all(connect: Callable[[int], Awaitable[ClientConnection]]
                      ) -> list[ClientConnection]:
    sockets: list[ClientConnection] = []
    for start in range(0, SUBSCRIBERS, 50):
        sockets += await asyncio.gather(*[connect(n) for n in range(start, start + 50)])
    return sockets


async def listeners(port: int) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f'tollgate_api_live_listeners{{tenant="{TENANT}"}}'))


async def fanout_graphql(env: Env, port: int, tokens: list[str], customer: str
                         ) -> list[float]:
    async def connect(n: int) -> ClientConnection:
        ws = await websockets.connect(f"ws://127.0.0.1:{port}/graphql", max_queue=None,
                                      subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {tokens[n]}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": BALANCE, "variables": {"id": customer}}}))
        return ws

    def sequence(message: dict[str, Any]) -> int | None:
        if message.get("type") != "next":
            raise AssertionError(f"unexpected message {message}")
        return int(message["payload"]["data"]["balanceChanged"]["balance"]["amountMicros"])

    fan = FanOut(sequence)
    sockets = await connect_all(connect)
    receivers = [asyncio.create_task(fan.receive(ws)) for ws in sockets]
    try:
        for _ in range(600):
            if await listeners(port) >= SUBSCRIBERS:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the subscriptions did not all register")
        return await fan.run(env, f"tg.{TENANT}.evt.balance.updated", customer)
    finally:
        await asyncio.gather(*[ws.close() for ws in sockets])
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)


async def fanout_baseline(env: Env, customer: str) -> list[float]:
    port = free_port()
    subject = f"bench.{TENANT}.fanout"
    server = spawn([sys.executable, "-m", "bench.ws_fanout_baseline", str(port), env.nats_url,
                    subject], {})
    try:
        for _ in range(200):
            try:
                probe = await websockets.connect(f"ws://127.0.0.1:{port}")
                await probe.close()
                break
            except OSError:
                await asyncio.sleep(0.05)

        async def connect(n: int) -> ClientConnection:
            ws = await websockets.connect(f"ws://127.0.0.1:{port}", max_queue=None)
            assert await ws.recv() == "ready"
            return ws

        fan = FanOut(lambda envelope: int(envelope["data"]["balanceMicros"]))
        sockets = await connect_all(connect)
        receivers = [asyncio.create_task(fan.receive(ws)) for ws in sockets]
        try:
            return await fan.run(env, subject, customer)
        finally:
            await asyncio.gather(*[ws.close() for ws in sockets])
            for task in receivers:
                task.cancel()
            await asyncio.gather(*receivers, return_exceptions=True)
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- main ------------------------------------------------------------------------------------

def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A server process of its own (stderr kept: a crash should say why)."""
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL)


async def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError("tollgate api exited")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("tollgate api did not become healthy")


PARTS = ("dashboard", "fanout")
TITLE = "GraphQL API"


def chosen_parts() -> set[str]:
    """`API_BENCH=fanout`: only the fan-out (quick: no usage to rate, no HTTP load)."""
    chosen = {p.strip() for p in os.environ.get("API_BENCH", ",".join(PARTS)).split(",")}
    unknown = chosen - set(PARTS)
    if unknown or not chosen:
        raise SystemExit(f"API_BENCH: choose from {', '.join(PARTS)} (got {sorted(unknown)})")
    return chosen


def recorded_part(letter: str) -> tuple[str, list[str]]:
    """The date and lines of part `(a)` or `(b)` as bench/RESULTS.md has them now."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    section = text.split(f"\n## {TITLE}\n", 1)[1].split("\n## ", 1)[0] if (
        f"\n## {TITLE}\n" in text) else ""
    lines = section.strip().splitlines()
    stamp = lines[0].split(" · ")[0] if lines else "never"
    carried = f"({letter}) is carried over from the run of "
    for line in lines:
        if carried in line:  # still the figures of an earlier run
            stamp = line.split(carried, 1)[1].split(".", 1)[0]
    found: list[str] = []  # from its "(x) " paragraph to the next part's or the end
    for line in lines:
        if line.startswith(("(a) ", "(b) ")):
            if found:
                break
            if line.startswith(f"({letter}) "):
                found.append(line)
        elif found:
            found.append(line)
    while found and not found[-1]:
        found.pop()
    return stamp, found or [f"({letter}) not measured yet"]


def dashboard_lines(dash: dict[str, Figures]) -> list[str]:
    return [
        f"(a) Customer dashboard query (profile, balance, allowances, subscriptions, last 20 of "
        f"{USAGE_PER_CUSTOMER} rated usage records, last 3 of {INVOICES_PER_CUSTOMER} invoices "
        f"with their lines) for "
        f"{CUSTOMERS} customers, each with its own customer token. `tollgate api` runs in its "
        f"own process (uvicorn with uvloop and httptools, default rate limit on); {WORKERS} "
        "closed-loop clients on "
        f"keep-alive connections for {MEASURE_S:.0f} s after {WARMUP_S:.0f} s warm-up; the "
        "baseline executes the same query in this process with the same schema "
        "(`schema.execute`, parser and validation caches on) and the same pool size. Then one "
        "client alone (unloaded latency). Then the maximum sustainable rate over HTTP: the "
        "highest open-loop rate the API keeps pace with (≥ 95 % of the offered rate completed, "
        f"in {STEP_S:.0f}-s steps, bisected below the closed-loop maximum; ADR 0009), and an "
        f"open loop at 70 % of it for {MEASURE_S:.0f} s, latency from each request's scheduled "
        "start (goal: p99 ≤ 20 ms).",
        "",
        "| figure | queries/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- |",
        *[f"| {label} | {dash[key].rate:,.0f} | {dash[key].p50_ms:.1f} | {dash[key].p99_ms:.1f} |"
          for key, label in [
              ("base", f"baseline: in-process `schema.execute`, {WORKERS} clients"),
              ("http", f"Tollgate: POST /graphql, {WORKERS} clients"),
              ("base_1", "baseline: in-process, 1 client"),
              ("http_1", "Tollgate: POST /graphql, 1 client"),
              ("http_70", "Tollgate: POST /graphql, open loop at 70 % of its sustainable "
                          "maximum")]],
        f"| Tollgate: maximum sustainable rate (open loop) | {dash['http_max'].rate:,.0f} | | |",
        f"| throughput ratio (goal ≥ 0.5×) | {dash['http'].rate / dash['base'].rate:.2f}× | | |",
        *cpu_lines(dash),
    ]


def cpu_lines(dash: dict[str, Figures]) -> list[str]:
    """What the API process spent per query, and how busy the open loop kept it."""
    cpu = [dash[key].cpu_ms for key in ("http", "http_1", "http_70")]
    if any(ms is None for ms in cpu):
        return []
    many, one, open_ = (ms or 0.0 for ms in cpu)
    busy = dash["http_70"].rate * open_ / 1000
    return ["", f"`tollgate api` CPU per query (user + system): {many:.2f} ms with {WORKERS} "
            f"clients, {one:.2f} ms with one, {open_:.2f} ms in the open loop, which kept it "
            f"busy {busy:.0%} of the time (a query costs more CPU when few run at once)."]


def fanout_lines(ours: list[float], bare: list[float]) -> list[str]:
    return [
        f"(b) Fan-out: {FANOUT_EVENTS} `evt.balance.updated` events published on NATS, one at a "
        f"time, each to {SUBSCRIBERS:,} graphql-transport-ws subscriptions of `balanceChanged` "
        f"for the same customer ({SUBSCRIBERS:,} websockets, each with its own agent credential, "
        "as back-office dashboards would be: one document, one audience, so they share one "
        "execution per event, ADR 0009); latency "
        "from publish to each subscriber's `next` message, clients in this process. Baseline: "
        f"a bare `websockets` server forwarding the NATS message to {SUBSCRIBERS:,} plain "
        "websocket clients (no GraphQL, credential or filtering).",
        "",
        "| figure | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- |",
        f"| baseline: NATS → bare websocket broadcast | {quantile(bare, 50):.1f} | "
        f"{quantile(bare, 99):.1f} | {max(bare):.1f} |",
        f"| Tollgate: NATS → EventHub → graphql-transport-ws | {quantile(ours, 50):.1f} | "
        f"{quantile(ours, 99):.1f} | {max(ours):.1f} |",
        f"| p99 ratio (goal: p99 ≤ 250 ms) | | {quantile(ours, 99) / quantile(bare, 99):.1f}× | |",
    ]


async def main() -> None:
    parts = chosen_parts()
    async with environment() as env:
        await example_tenant(env.pool, TENANT)
        people = await customers(env.pool, CUSTOMERS if "dashboard" in parts else 1)
        if "dashboard" in parts:
            await publish_usage(env.nc, TENANT, [line for _, line in people],
                                CUSTOMERS * USAGE_PER_CUSTOMER)
            await rate_all(env)
            await bill(env, INVOICES_PER_CUSTOMER)
            await analyze(env.owner_dsn)

        secret = secrets.token_urlsafe(32)
        port = free_port()
        api = spawn([str(TOLLGATE), "api", "--host", "127.0.0.1", "--port", str(port)],
                    {"TOLLGATE_DATABASE_URL": env.app_dsn, "TOLLGATE_NATS_URL": env.nats_url,
                     "TOLLGATE_JWT_SECRET": secret, "TOLLGATE_LOG_LEVEL": "WARNING"})
        try:
            await wait_healthy(port, api)
            verifier = TokenVerifier(secret, ISSUER)
            if "dashboard" in parts:
                dash = await dashboard(env, port, api.pid, verifier, people)
            if "fanout" in parts:
                watched = people[0][0]
                agents = [verifier.mint(TENANT, f"agent-{n}", ["agent"])
                          for n in range(SUBSCRIBERS)]
                ours = await fanout_graphql(env, port, agents, watched)
                bare = await fanout_baseline(env, watched)
        finally:
            api.terminate()
            api.wait(timeout=30)

    carried = []
    if "dashboard" in parts:
        part_a = dashboard_lines(dash)
    else:
        stamp, part_a = recorded_part("a")
        carried.append(f"(a) is carried over from the run of {stamp}.")
    if "fanout" in parts:
        part_b = fanout_lines(ours, bare)
    else:
        stamp, part_b = recorded_part("b")
        carried.append(f"(b) is carried over from the run of {stamp}.")
    note = [f"This run: `API_BENCH={','.join(p for p in PARTS if p in parts)}`; "
            + " ".join(carried), ""] if carried else []
    record(TITLE, [*note, *part_a, "", *part_b])


if __name__ == "__main__":
    asyncio.run(main())
