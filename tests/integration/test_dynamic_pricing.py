"""Dynamic pricing: the congestion level last reported for the event's cell multiplies the
price, and the rated record keeps the level and zone it used."""

from __future__ import annotations

import json

import asyncpg

from tests.conftest import Servers
from tests.factories import install_example_catalog, offer_document, usage_payload
from tests.integration.test_exactly_once import Delivered
from tollgate_core import catalog_service, customer_service
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.resources import Offer, parse_resource
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool

MIB = 1024**2
LINE = "491708888888"


async def test_congestion_and_zone_multipliers_are_applied_and_recorded(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    offer = parse_resource(offer_document(tenant_name, "surge-data", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes",
                  "tiers": [{"from": 0, "unitPrice": "0.01", "per": MIB}],
                  "zones": [{"name": "eu", "multiplierPercent": "200"}]}}],
        dynamicPricing={"congestion": [{"level": "high", "multiplierPercent": "150"}]}))
    assert isinstance(offer, Offer)
    assert (await catalog_service.apply_offer(pool, tenant_name, "surge-data", offer.spec)).valid
    customer = await customer_service.register_customer(
        pool, tenant_name, name="S", email="s@example.de", payment_type="postpaid",
        customer_type="consumer", idempotency_key="r")
    await customer_service.place_order(pool, tenant_name, customer_id=customer,
                                       offer="surge-data", subscriber=LINE, idempotency_key="o")
    congestion = CongestionMap()
    assert congestion.report(json.dumps({"data": {"cell": "c-1", "level": "high"}}).encode())
    assert not congestion.report(b'{"data": {"cell": "c-2", "level": "apocalyptic"}}')
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool, congestion)

    def event(cell: str, zone: str | None) -> Delivered:
        _, payload = usage_payload(tenant_name, LINE, 10 * MIB)
        body = json.loads(payload)
        body["data"]["attributes"] = {"cell": cell, **({"zone": zone} if zone else {})}
        return Delivered(f"tg.{tenant_name}.usage.data", json.dumps(body).encode())

    # 10 MiB at 0.01 EUR/MiB = 100,000 micros; × 1.5 in the congested cell = 150,000;
    # × 1.5 × 2 when also roaming in "eu" = 300,000; a quiet cell at home: 100,000.
    outcome = await engine.process([event("c-1", None), event("c-1", "eu"), event("c-9", None)])
    assert outcome.rated == 3
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        rows = await conn.fetch("SELECT amount_micros, price_factors FROM rated_usage"
                                " WHERE tenant_id = $1 ORDER BY amount_micros", tenant_name)
    finally:
        await conn.close()
    assert [(r["amount_micros"], json.loads(r["price_factors"])) for r in rows] == [
        (100_000, {}), (150_000, {"congestion": "high"}),
        (300_000, {"congestion": "high", "zone": "eu"})]


async def test_loyalty_tier_multiplier_applies_to_the_customers_usage(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    offer = parse_resource(offer_document(tenant_name, "loyal-data", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes",
                  "tiers": [{"from": 0, "unitPrice": "0.01", "per": MIB}]}}],
        dynamicPricing={"loyalty": [{"tier": "gold", "multiplierPercent": "80"}]}))
    assert isinstance(offer, Offer)
    assert (await catalog_service.apply_offer(pool, tenant_name, "loyal-data", offer.spec)).valid
    lines = {"gold": "491707777771", "none": "491707777772"}
    for tier, line in lines.items():
        customer = await customer_service.register_customer(
            pool, tenant_name, name=tier, email=f"{tier}@example.de", payment_type="postpaid",
            customer_type="consumer", idempotency_key=f"r-{tier}")
        await customer_service.place_order(pool, tenant_name, customer_id=customer,
                                           offer="loyal-data", subscriber=line,
                                           idempotency_key=f"o-{tier}")
        if tier == "gold":
            await customer_service.set_loyalty_tier(pool, tenant_name, customer, "gold")
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool, CongestionMap())
    # 10 MiB at 0.01 EUR/MiB = 100,000 micros; the gold customer pays 80 %: 80,000.
    events = [Delivered(f"tg.{tenant_name}.usage.data",
                        usage_payload(tenant_name, line, 10 * MIB)[1]) for line in lines.values()]
    assert (await engine.process(events)).rated == 2
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        rows = await conn.fetch("SELECT amount_micros, price_factors FROM rated_usage"
                                " WHERE tenant_id = $1 ORDER BY amount_micros", tenant_name)
    finally:
        await conn.close()
    assert [(r["amount_micros"], json.loads(r["price_factors"])) for r in rows] == [
        (80_000, {"loyalty": "gold"}), (100_000, {})]
