"""Allowance rollover: what a period leaves unused carries into the next one, at most one
period's quantity."""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg

from tests.conftest import Servers
from tests.factories import install_example_catalog, offer_document, usage_payload
from tests.integration.test_exactly_once import Delivered
from tollgate_core import catalog_service, customer_service
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.resources import Offer, parse_resource
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool

MIB = 1024**2
LINE = "491707777777"


async def test_unused_allowance_rolls_over_once(pool: Pool, servers: Servers,
                                                tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    offer = parse_resource(offer_document(tenant_name, "rollover-1g", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes",
                  "tiers": [{"from": 0, "unitPrice": "0.01", "per": MIB}]}}],
        allowances=[{"name": "data-1g", "service": "data", "quantity": 1024 * MIB,
                     "unit": "bytes", "period": "month", "rollover": True}]))
    assert isinstance(offer, Offer)
    assert (await catalog_service.apply_offer(pool, tenant_name, "rollover-1g",
                                              offer.spec)).valid
    customer = await customer_service.register_customer(
        pool, tenant_name, name="R", email="r@example.de", payment_type="postpaid",
        customer_type="consumer", idempotency_key="r")
    await customer_service.place_order(pool, tenant_name, customer_id=customer,
                                       offer="rollover-1g", subscriber=LINE,
                                       idempotency_key="o")
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)

    def used_on(day: datetime, mib: int) -> Delivered:
        return Delivered(f"tg.{tenant_name}.usage.data",
                         usage_payload(tenant_name, LINE, mib * MIB, start_time=day)[1])

    # September: 100 MiB used, 924 MiB unused. October: 1,024 + 924 = 1,948 MiB available;
    # 1,900 MiB used, 48 unused. November: 1,024 + 48 = 1,072 MiB (never more than 2 × 1,024).
    for day, mib in ((datetime(2026, 9, 10, tzinfo=UTC), 100),
                     (datetime(2026, 10, 10, tzinfo=UTC), 1_900),
                     (datetime(2026, 11, 10, tzinfo=UTC), 1)):
        assert (await engine.process([used_on(day, mib)])).rated == 1
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        rows = await conn.fetch("SELECT period_start, quantity, used FROM allowance_usage"
                                " WHERE tenant_id = $1 ORDER BY period_start", tenant_name)
        charged = await conn.fetchval("SELECT sum(amount_micros) FROM rated_usage"
                                      " WHERE tenant_id = $1", tenant_name)
    finally:
        await conn.close()
    assert [(r["period_start"], r["quantity"] // MIB, r["used"] // MIB) for r in rows] == [
        (date(2026, 9, 1), 1024, 100), (date(2026, 10, 1), 1948, 1900),
        (date(2026, 11, 1), 1072, 1)]
    assert charged == 0  # everything fitted in the allowances
