"""`tollgate billing` as a running engine: it bills the latest ended period by itself and
relays `evt.invoice.issued` to NATS."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client

from tests.billing.test_bill_run import TZ, customers, period_for
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tollgate_core.billing.service import run_billing
from tollgate_core.domain.billing import local_midnight
from tollgate_core.domain.events import event_subject
from tollgate_core.settings import BillingSettings
from tollgate_core.store.db import Pool


async def test_the_engine_bills_the_ended_period_and_publishes_invoices(
        pool: Pool, servers: Servers, nats_client: Client, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    created = await customers(pool, tenant_name, 3, local_midnight(period.start, TZ))
    issued: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_event(msg: object) -> None:
        await issued.put(json.loads(msg.data)["data"])  # type: ignore[attr-defined]

    sub = await nats_client.subscribe(event_subject(tenant_name, "invoice.issued"), cb=on_event)
    stop = asyncio.Event()
    engine = asyncio.create_task(run_billing(BillingSettings(
        tenant_name, servers.app_dsn, servers.nats_url, interval_s=0.2, metrics_port=None), stop))
    try:
        events = [await asyncio.wait_for(issued.get(), timeout=30) for _ in created]
    finally:
        stop.set()
        await engine
        await sub.unsubscribe()
    assert sorted(str(e["customerId"]) for e in events) == sorted(str(c) for c, _ in created)
    assert {e["periodStart"] for e in events} == {period.start.isoformat()}
    assert sorted(str(e["billNo"]) for e in events) == [
        f"DE-{period.start:%Y}-{n:08d}" for n in (1, 2, 3)]
