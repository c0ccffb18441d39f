"""Run the charging process of one tenant: offline rating and online charging side by side,
sharing one catalog cache, until stopped."""

from __future__ import annotations

import asyncio
import gc
import json

import structlog

from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.domain.events import usage_subject
from tollgate_core.domain.usage import UsageEvent, usage_envelope
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.engines.metered import MeteredOnlineCharging
from tollgate_core.engines.online import OnlinePolicy, serve
from tollgate_core.observability import metrics_endpoint
from tollgate_core.settings import ChargingSettings
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, create_pool, tenant_tx

log = structlog.get_logger(__name__)


async def online_policy(pool: Pool, tenant: str) -> OnlinePolicy:
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
    if spec is None:
        return OnlinePolicy()
    return OnlinePolicy(validity_s=spec.charging.reservation_validity_seconds,
                        failure_handling=spec.charging.failure_handling,
                        continue_quota_units=spec.charging.continue_quota_units)


YOUNG_GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect the young generation every 50,000 net container allocations instead of
    CPython's 700.

    Offline rating allocates a few dozen short-lived objects per event (messages, parsed
    events, keys, rows) and no reference cycles on its hot path: at 700 the cyclic collector
    ran some two hundred times a second, traversed every batch in flight and found nothing
    (bench/RESULTS.md). Cycles, if any, are still collected, only less often."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)


async def _all_set(*events: asyncio.Event) -> None:
    for event in events:
        await event.wait()


async def run_charging(settings: ChargingSettings, stop: asyncio.Event,
                       ready: asyncio.Event | None = None) -> None:
    """`ready` is set once usage is being consumed and charge requests are answered; Prometheus
    `/metrics` is served on `settings.metrics_port` meanwhile."""
    tune_gc()
    async with metrics_endpoint(settings.metrics_host, settings.metrics_port):
        await _run_charging(settings, stop, ready)


async def _run_charging(settings: ChargingSettings, stop: asyncio.Event,
                        ready: asyncio.Event | None) -> None:
    # online group workers + offline batches + outbox relay + expiry sweep
    pool = await create_pool(settings.database_url, min_size=2, max_size=12)
    nc = await connect(settings.nats_url, name=f"charging-{settings.tenant}")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        congestion = CongestionMap()
        await congestion.follow(nc, settings.tenant)
        offline = ChargingEngine(settings, pool, congestion)
        async def publish_deferred(event: UsageEvent) -> None:
            await js.publish(usage_subject(settings.tenant, event.service.value),
                             json.dumps(usage_envelope(event, "tollgate-charging")).encode(),
                             headers={"Nats-Msg-Id": event.id})

        online = MeteredOnlineCharging(settings.tenant, pool, offline.catalog,
                                       await online_policy(pool, settings.tenant), congestion,
                                       publish_deferred)
        offline_ready, online_ready = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(offline.run(nc, js, stop, offline_ready)),
                 asyncio.create_task(serve(nc, online, stop, online_ready))]
        if ready is not None:
            both_ready = asyncio.create_task(_all_set(offline_ready, online_ready))
            done, _ = await asyncio.wait([*tasks, both_ready],
                                         return_when=asyncio.FIRST_COMPLETED)
            if both_ready in done:
                ready.set()
            else:
                both_ready.cancel()
        await asyncio.gather(*tasks)
    finally:
        await nc.close()  # acks were flushed after each batch; nothing left to drain
        await pool.close()
