"""Run the charging engine of one tenant: connect, declare streams, pull until stopped."""

from __future__ import annotations

import asyncio

import structlog

from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import create_pool

log = structlog.get_logger(__name__)


async def run_charging(settings: ChargingSettings, stop: asyncio.Event) -> None:
    pool = await create_pool(settings.database_url, min_size=1, max_size=4)
    nc = await connect(settings.nats_url, name=f"charging-{settings.tenant}")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await ChargingEngine(settings, pool).run(nc, js, stop)
    finally:
        await nc.close()  # acks were flushed after each batch; nothing left to drain
        await pool.close()
