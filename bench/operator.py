"""The operator on the test control plane (real etcd, kube-apiserver, controllers, kwok node),
each figure beside a baseline measured in the same run on the same API server:

(a) 1,000 Offers created for one tenant → all `Published`, vs the API server accepting the
    same 1,000 creates alone (into a namespace no operator watches);
(b) an Offer's price changed → the first usage event rated at the new price by a running
    charging engine (real PostgreSQL and NATS), p50/p99 over 50 trials, vs the bare API
    server round trip of a change (patch → the watch delivers it).

The operator (`tollgate operator`) and the charging engine (`tollgate charging`) run as their
own processes with their production defaults; this process only drives and observes.
`python -m bench operator` runs just this benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from bench.common import ROOT, Env, environment, record, usage_bytes
from tests.harness.controlplane import ControlPlane
from tollgate_core import customer_service
from tollgate_core.store.db import tenant_tx

OFFERS = 1_000
TRIALS = 50
FEED_INTERVAL_S = 0.02  # the usage feed during (b): one 1 MiB event every 20 ms
POLL_S = 0.01  # how often (b) looks for the first event rated at the new price
MIB = 1_048_576
GROUP = "/apis/bss.tollgate.dev/v1alpha1"
IMAGE = "example.invalid/tollgate:bench"
TOLLGATE = Path(sys.executable).parent / "tollgate"
BULK, LIVE, IDLE = "bench-bulk", "bench-live", "bench-idle"  # namespaces; IDLE is not watched
LINE = "491710000001"

Document = dict[str, Any]


# --------------------------------------------------------------------------- API client


class Kube:
    """A few JSON calls and watches to the API server, as its admin."""

    def __init__(self, cp: ControlPlane) -> None:
        self._server = cp.server
        self._headers = {"Authorization": f"Bearer {cp.token}", "Accept": "application/json"}
        context = ssl.create_default_context(cafile=str(cp.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=16),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            read_bufsize=4 * MIB)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, body: object | None = None,
                      content_type: str = "application/json") -> Any:
        headers = {**self._headers, "Content-Type": content_type}
        data = None if body is None else json.dumps(body)
        async with self._session.request(method, self._server + path, data=data,
                                         headers=headers) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:500]}")
            return json.loads(text)

    @contextlib.asynccontextmanager
    async def watch(self, path: str, query: str = "") -> AsyncIterator[AsyncIterator[bytes]]:
        """The lines of a watch of a collection from now on (from a list's resourceVersion);
        the server holds the watch once this is entered."""
        listed = await self.request("GET", f"{path}?limit=1{query}")
        version = listed["metadata"]["resourceVersion"]
        url = (f"{self._server}{path}?watch=1&timeoutSeconds=3600"
               f"&resourceVersion={version}{query}")
        async with self._session.get(url, headers=self._headers) as response:
            response.raise_for_status()
            yield response.content.__aiter__()


class Watcher:
    """Runs one watch in a task and hands each object added or modified to `seen`."""

    def __init__(self, kube: Kube, path: str, seen: Callable[[Document], None],
                 query: str = "") -> None:
        self.started = asyncio.Event()
        self._task = asyncio.create_task(self._run(kube, path, query, seen))

    async def _run(self, kube: Kube, path: str, query: str,
                   seen: Callable[[Document], None]) -> None:
        async with kube.watch(path, query) as lines:
            self.started.set()
            async for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] in ("ADDED", "MODIFIED"):
                    seen(event["object"])

    async def wait_started(self) -> None:
        """Until the watch is held by the server (raises what stopped it from starting)."""
        started = asyncio.create_task(self.started.wait())
        await asyncio.wait([started, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not self.started.is_set():
            started.cancel()
            self._task.result()
            raise RuntimeError("the watch ended before it started")

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def published(document: Document) -> bool:
    """`Published=True` for the generation the object is at."""
    generation = document["metadata"].get("generation")
    for item in (document.get("status") or {}).get("conditions") or ():
        if item["type"] == "Published":
            return bool(item["status"] == "True"
                        and item.get("observedGeneration") == generation)
    return False


# --------------------------------------------------------------------------- documents


def tenant_document(name: str, namespace: str) -> Document:
    return {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"market": "DE", "currency": "EUR", "timezone": "Europe/Berlin",
                     "locale": "de-DE",
                     "taxes": [{"category": "standard", "rate": "19", "inclusive": True}],
                     "charging": {"replicas": 1}, "api": {"replicas": 1},
                     "database": {"mode": "external", "secretRef": "tenant-db"}}}


def data_price(unit_price: str) -> Document:
    return {"name": "data", "priceType": "usage",
            "usage": {"service": "data", "unit": "bytes", "increment": 1024,
                      "tiers": [{"from": 0, "unitPrice": unit_price, "per": MIB}]}}


def plan_document(name: str, namespace: str, tenant: str, i: int) -> Document:
    """A monthly plan with a fee, data included and pay-as-you-go beyond: a typical offer."""
    return {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Offer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"tenantRef": {"name": tenant}, "displayName": f"Plan {i}", "kind": "plan",
                     "lifecycleStatus": "active", "channels": ["web", "app"],
                     "segments": ["consumer"], "taxCategory": "standard",
                     "prices": [{"name": "monthly-fee", "priceType": "recurring",
                                 "recurring": {"amount": f"{10 + i % 40}.99",
                                               "period": "month", "proration": "daily"}},
                                data_price("0.01")],
                     "allowances": [{"name": "data", "service": "data",
                                     "quantity": (1 + i % 20) * 1024 * MIB, "unit": "bytes",
                                     "period": "month"}]}}


def data_only_document(name: str, namespace: str, tenant: str, unit_price: str) -> Document:
    return {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Offer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"tenantRef": {"name": tenant}, "displayName": "Data", "kind": "plan",
                     "prices": [data_price(unit_price)]}}


async def namespace_with_database(kube: Kube, name: str, env: Env) -> None:
    await kube.request("POST", "/api/v1/namespaces",
                       {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    await kube.request("POST", f"/api/v1/namespaces/{name}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tenant-db"},
        "stringData": {"dsn": env.app_dsn, "ownerDsn": env.owner_dsn}})


async def until(check: Callable[[], Awaitable[bool]], what: str,
                deadline_s: float = 120.0, interval_s: float = 0.05) -> None:
    end = time.monotonic() + deadline_s
    while not await check():
        if time.monotonic() > end:
            raise RuntimeError(f"not within {deadline_s:.0f} s: {what}")
        await asyncio.sleep(interval_s)


async def ready_tenant(kube: Kube, namespace: str, name: str) -> None:
    await kube.request("POST", f"{GROUP}/namespaces/{namespace}/tenants",
                       tenant_document(name, namespace))

    async def ready() -> bool:
        body = await kube.request("GET", f"{GROUP}/namespaces/{namespace}/tenants/{name}")
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (body.get("status") or {}).get("conditions") or ())

    await until(ready, f"Tenant {namespace}/{name} Ready")


async def create_all(kube: Kube, documents: list[Document]) -> float:
    """Create one after the other, as `kubectl create -f` does; seconds taken."""
    started = time.perf_counter()
    for document in documents:
        namespace = document["metadata"]["namespace"]
        await kube.request("POST", f"{GROUP}/namespaces/{namespace}/offers", document)
    return time.perf_counter() - started


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path
            ) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- (a) bulk


@dataclass
class Bulk:
    baseline_s: float  # the API server accepting 1,000 creates, nothing watching
    created_s: float  # the same creates while the operator works
    published_s: float  # from the first create until the last Offer is Published


async def bulk(kube: Kube) -> Bulk:
    baseline_s = await create_all(kube, [plan_document(f"plan-{i:04d}", IDLE, "nobody", i)
                                         for i in range(OFFERS)])
    done: dict[str, float] = {}

    def seen(document: Document) -> None:
        name = document["metadata"]["name"]
        if name not in done and published(document):
            done[name] = time.perf_counter()

    watcher = Watcher(kube, f"{GROUP}/namespaces/{BULK}/offers", seen)
    await watcher.wait_started()
    started = time.perf_counter()
    created_s = await create_all(kube, [plan_document(f"plan-{i:04d}", BULK, "bulk", i)
                                        for i in range(OFFERS)])

    async def all_published() -> bool:
        return len(done) == OFFERS

    await until(all_published, f"{OFFERS} Offers Published", deadline_s=600)
    await watcher.close()
    return Bulk(baseline_s, created_s, max(done.values()) - started)


# --------------------------------------------------------------------------- (b) live


async def watch_roundtrips(kube: Kube) -> list[float]:
    """Seconds from a spec patch to the watch delivering its generation (no controller)."""
    path = f"{GROUP}/namespaces/{IDLE}/offers"
    target = "plan-0000"
    generations: asyncio.Queue[int] = asyncio.Queue()
    watcher = Watcher(kube, path, lambda d: generations.put_nowait(d["metadata"]["generation"]),
                      query=f"&fieldSelector=metadata.name%3D{target}")
    await watcher.wait_started()
    latencies = []
    for trial in range(TRIALS):
        started = time.perf_counter()
        patched = await kube.request("PATCH", f"{path}/{target}",
                                     {"spec": {"description": f"trial {trial}"}},
                                     "application/merge-patch+json")
        while await generations.get() != patched["metadata"]["generation"]:
            pass
        latencies.append(time.perf_counter() - started)
    await watcher.close()
    return latencies


def trial_price(trial: int) -> Decimal:
    return Decimal("0.0100") + Decimal(trial) * Decimal("0.0001")  # per MiB, unique per trial


async def feed(env: Env, tenant: str, stop: asyncio.Event) -> None:
    """Usage of the line as the network sends it: stamped now, a steady trickle."""
    js = env.nc.jetstream()
    while not stop.is_set():
        await js.publish(f"tg.{tenant}.usage.data", usage_bytes(tenant, LINE, MIB))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FEED_INTERVAL_S)


async def rated_at_price(env: Env, tenant: str, micros: int) -> bool:
    async with tenant_tx(env.pool, tenant, readonly=True) as conn:
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM rated_usage WHERE tenant_id = $1"
            " AND amount_micros = $2)", tenant, micros))


async def price_to_rating(kube: Kube, env: Env, tenant: str) -> list[float]:
    """Seconds from an Offer's price change (PATCH accepted) to the first usage event rated
    at that price being committed, with usage flowing all along."""
    path = f"{GROUP}/namespaces/{LIVE}/offers/data"
    latencies = []
    for trial in range(TRIALS):
        price = trial_price(trial)
        micros = int(price * 1_000_000)  # 1 MiB at `price` per MiB
        started = time.perf_counter()
        await kube.request("PATCH", path, {"spec": {"prices": [data_price(str(price))]}},
                           "application/merge-patch+json")
        await until(functools.partial(rated_at_price, env, tenant, micros),
                    f"usage rated at {price}/MiB", interval_s=POLL_S)
        latencies.append(time.perf_counter() - started)
        # Not timed: the event was priced by the revision the operator published for it.
        async def offer_published() -> bool:
            return published(await kube.request("GET", path))

        await until(offer_published, "the Offer Published")  # its status may trail the rating
        body = await kube.request("GET", path)
        async with tenant_tx(env.pool, tenant, readonly=True) as conn:
            revisions = await conn.fetch(
                "SELECT DISTINCT catalog_revision FROM rated_usage WHERE tenant_id = $1"
                " AND amount_micros = $2", tenant, micros)
        assert [r["catalog_revision"] for r in revisions] == [
            body["status"]["publishedRevision"]], (revisions, body["status"])
    return latencies


async def live_tenant(kube: Kube, env: Env, tenant: str) -> None:
    """A Tenant with one data offer and one postpaid line on it."""
    await ready_tenant(kube, LIVE, tenant)
    offer = data_only_document("data", LIVE, tenant, "0.0050")
    await kube.request("POST", f"{GROUP}/namespaces/{LIVE}/offers", offer)

    async def offer_published() -> bool:
        return published(await kube.request("GET", f"{GROUP}/namespaces/{LIVE}/offers/data"))

    await until(offer_published, "the live Offer Published")
    customer = await customer_service.register_customer(
        env.pool, tenant, name="Bench", email="bench@example.de", payment_type="postpaid",
        customer_type="consumer", idempotency_key="bench-reg")
    await customer_service.place_order(env.pool, tenant, customer_id=customer, offer="data",
                                       subscriber=LINE, idempotency_key="bench-order")


# --------------------------------------------------------------------------- main


def p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(cp: ControlPlane, env: Env, logs: Path) -> tuple[Bulk, list[float],
                                                                  list[float]]:
    async with Kube(cp) as kube:
        for namespace in (BULK, LIVE, IDLE):
            await namespace_with_database(kube, namespace, env)
        operator_env = {"TOLLGATE_WORKLOAD_IMAGE": IMAGE, "TOLLGATE_LOG_LEVEL": "WARNING",
                        "TOLLGATE_WATCH_NAMESPACES": f"{BULK},{LIVE}",
                        "TOLLGATE_PEERING_MODE": "standalone"}
        with process([str(TOLLGATE), "operator", "--kubeconfig", str(cp.kubeconfig)],
                     operator_env, logs / "operator.log"):
            await ready_tenant(kube, BULK, "bulk")
            print(f"[bench] {OFFERS:,} Offers ...", flush=True)
            figures = await bulk(kube)

            print(f"[bench] price change -> rated, {TRIALS} trials ...", flush=True)
            tenant = "live"
            await live_tenant(kube, env, tenant)
            charging_env = {"TOLLGATE_DATABASE_URL": env.app_dsn,
                            "TOLLGATE_NATS_URL": env.nats_url, "TOLLGATE_LOG_LEVEL": "WARNING"}
            with process([str(TOLLGATE), "charging", "--tenant", tenant, "--metrics-port", "0"],
                         charging_env, logs / "charging.log"):
                stop = asyncio.Event()
                feeder = asyncio.create_task(feed(env, tenant, stop))
                try:
                    await until(lambda: rated_at_price(env, tenant, 5_000),
                                "the charging engine rating usage")
                    baseline = await watch_roundtrips(kube)
                    ours = await price_to_rating(kube, env, tenant)
                finally:
                    stop.set()
                    await feeder
    return figures, baseline, ours


async def main() -> None:
    crds = sorted((ROOT / "crds").glob("*.yaml"))
    logs = Path(tempfile.mkdtemp(prefix="tollgate-bench-operator-"))
    async with environment() as env:
        with ControlPlane(crds=crds) as cp:
            bulk_figures, baseline, ours = await measure(cp, env, logs)
    print(f"[bench] operator and charging logs: {logs}")
    b = bulk_figures
    record("Operator", [
        "The test control plane (etcd, kube-apiserver, controller-manager, scheduler, a kwok "
        "node), PostgreSQL and NATS on this machine; `tollgate operator` (namespaced, "
        "production intervals) and `tollgate charging` in their own processes. Objects are "
        "created one after the other over HTTP, as `kubectl create -f` does. Baselines use "
        "the same API server in the same run.",
        "",
        f"(a) {OFFERS:,} Offers (plans with a fee, an allowance and a data price) for one "
        "tenant:",
        "",
        "| figure | seconds |",
        "| --- | --- |",
        f"| baseline: API server accepts {OFFERS:,} creates, nothing watching | "
        f"{b.baseline_s:.1f} |",
        f"| the same {OFFERS:,} creates while the operator works | {b.created_s:.1f} |",
        f"| Tollgate: first create → all {OFFERS:,} Published (goal ≤ 60 s) | "
        f"{b.published_s:.1f} |",
        f"| ratio all Published / baseline creates | {b.published_s / b.baseline_s:.2f}× |",
        "",
        "(b) the data price of a tenant's Offer (a second tenant, one offer) changed (PATCH) → "
        "first usage event rated at the new price and committed, while a line sends a 1 MiB "
        f"event every {FEED_INTERVAL_S * 1000:.0f} "
        f"ms (found by polling every {POLL_S * 1000:.0f} ms); {TRIALS} trials:",
        "",
        "| figure | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- |",
        f"| baseline: PATCH → the watch delivers the new generation | "
        f"{p(baseline, 50) * 1000:.1f} | {p(baseline, 99) * 1000:.1f} | "
        f"{max(baseline) * 1000:.1f} |",
        f"| Tollgate: PATCH → Published → rated at the new price (goal p50 ≤ 1 s, "
        f"p99 ≤ 5 s) | {p(ours, 50) * 1000:.0f} | {p(ours, 99) * 1000:.0f} | "
        f"{max(ours) * 1000:.0f} |",
        f"| ratio p50 | {p(ours, 50) / p(baseline, 50):.1f}× | | |",
    ])


if __name__ == "__main__":
    asyncio.run(main())
