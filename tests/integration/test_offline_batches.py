"""Offline rating of whole batches: several batches in flight rate a line in stream order;
a batch splits prepaid charges between balance and receivable event by event, and a balance
threshold fires once."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
from nats.js import JetStreamContext

from tests.conftest import Servers
from tests.factories import install_example_catalog, offer_document, usage_payload
from tests.integration.test_exactly_once import Delivered
from tests.integration.test_online_charging import LINE
from tests.running import eventually
from tollgate_core import catalog_service, customer_service
from tollgate_core.bus.nats import connect
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.resources import Offer, parse_resource
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool

MIB = 1024**2
CHUNK = 256 * MIB


async def owner_fetch(servers: Servers, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def test_batches_in_flight_rate_a_line_in_stream_order(
        pool: Pool, js: JetStreamContext, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    customer = await customer_service.register_customer(
        pool, tenant_name, name="O", email="o@example.de", payment_type="postpaid",
        customer_type="consumer", idempotency_key="reg")
    await customer_service.place_order(pool, tenant_name, customer_id=customer,
                                       offer="mobile-m", subscriber=LINE,
                                       idempotency_key="order")
    # Event i uses (i + 1) × 256 MiB of the 5 GiB (20 × 256 MiB) allowance: in stream order
    # events 0–4 are covered (15 chunks), event 5 by 5 of its 6 chunks, the rest not at all.
    # Batches of 3 with 2 in flight all hold the same line, so any batch rated before the
    # one ahead of it would draw the allowance in another order.
    ids = []
    for i in range(12):
        event_id, payload = usage_payload(tenant_name, LINE, (i + 1) * CHUNK)
        await js.publish(f"tg.{tenant_name}.usage.data", payload,
                         headers={"Nats-Msg-Id": event_id})
        ids.append(uuid.UUID(event_id))
    engine = ChargingEngine(ChargingSettings(
        tenant=tenant_name, database_url=servers.app_dsn, nats_url=servers.nats_url,
        batch_max=3, batches_in_flight=2, fetch_timeout_s=0.2, metrics_port=None), pool)
    nc = await connect(servers.nats_url, name="in-flight")
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(nc, nc.jetstream(), stop))
    try:
        async def all_rated() -> bool:
            rows = await owner_fetch(servers, "SELECT count(*) AS n FROM rated_usage"
                                     " WHERE tenant_id = $1", tenant_name)
            return bool(rows[0]["n"] == len(ids))

        await eventually(all_rated)
    finally:
        stop.set()
        await task
        await nc.close()
    rows = await owner_fetch(servers, "SELECT event_id, allowance_units FROM rated_usage"
                             " WHERE tenant_id = $1", tenant_name)
    drawn = {r["event_id"]: r["allowance_units"] // CHUNK for r in rows}
    assert [drawn[i] for i in ids] == [1, 2, 3, 4, 5, 5, 0, 0, 0, 0, 0, 0]
    info = await js.consumer_info("USAGE", engine.consumer)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)  # every message acked


async def test_a_batch_splits_prepaid_charges_in_order_and_a_balance_threshold_fires_once(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    # 0.01 EUR per MiB, no allowance, notify below 5 EUR: each 300 MiB event costs 3 EUR
    offer = parse_resource(offer_document(tenant_name, "prepaid-data", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes", "increment": 1024,
                  "tiers": [{"from": 0, "unitPrice": "0.01", "per": MIB}]}}],
        thresholds=[{"balanceBelow": "5.00", "upsellOffer": "mobile-m"}]))
    assert isinstance(offer, Offer)
    assert (await catalog_service.apply_offer(pool, tenant_name, "prepaid-data",
                                              offer.spec)).valid
    customer = await customer_service.register_customer(
        pool, tenant_name, name="P", email="p@example.de", payment_type="prepaid",
        customer_type="consumer", idempotency_key="reg")
    await customer_service.place_order(pool, tenant_name, customer_id=customer,
                                       offer="prepaid-data", subscriber=LINE,
                                       idempotency_key="order")
    await customer_service.top_up(pool, tenant_name, customer_id=customer, amount="10.00",
                                  idempotency_key="topup")
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)

    def batch(count: int) -> list[Delivered]:
        return [Delivered(f"tg.{tenant_name}.usage.data",
                          usage_payload(tenant_name, LINE, 300 * MIB)[1]) for _ in range(count)]

    first = await engine.process(batch(1))  # 10 → 7 EUR: above the threshold
    assert first.balances[f"customer:{customer}"] == 7_000_000
    # 7 → 4 → 1 EUR, then 3 EUR with 1 EUR left: 1 from the balance, 2 to the receivable
    second = await engine.process(batch(3))
    assert second.rated == 3
    assert second.balances[f"customer:{customer}"] == 0
    assert second.balances[f"receivable:{customer}"] == -2_000_000
    transfers = await owner_fetch(
        servers, "SELECT code, sum(amount_micros) AS total, count(*) AS n FROM transfers"
        " WHERE tenant_id = $1 AND code IN ('usage', 'usageOverage') GROUP BY code"
        " ORDER BY code", tenant_name)
    assert [(t["code"], t["total"], t["n"]) for t in transfers] == [
        ("usage", 10_000_000, 4), ("usageOverage", 2_000_000, 1)]

    await engine.process(batch(1))  # further below: the threshold fired already
    crossed = await owner_fetch(
        servers, "SELECT owner_id, threshold_key FROM threshold_notifications"
        " WHERE tenant_id = $1", tenant_name)
    assert [(r["owner_id"], r["threshold_key"]) for r in crossed] == [
        (customer, "balance-below:5000000")]
    events = await owner_fetch(
        servers, "SELECT payload FROM outbox WHERE tenant_id = $1"
        " AND subject LIKE '%.threshold.crossed'", tenant_name)
    assert [json.loads(e["payload"])["data"]["balanceMicros"] for e in events] == [0]
