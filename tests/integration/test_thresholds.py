"""Thresholds fire `threshold.crossed` exactly once per threshold and period."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from tests.conftest import Servers
from tests.factories import install_example_catalog
from tests.integration.test_walking_skeleton import register_and_order, send_usage_cli
from tests.running import Api, StartEngine
from tollgate_core.store.db import Pool

GIB = 1024**3


async def test_allowance_thresholds_fire_once_per_period_with_the_upsell(
        api: Api, pool: Pool, js: JetStreamContext, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    customer_id = await register_and_order(api, api.token(tenant_name))
    crossed = await js.subscribe(f"tg.{tenant_name}.evt.threshold.crossed", stream="EVENTS")
    await charging(tenant_name)

    # 5 GiB allowance: 80 % is crossed at 4 GiB, 100 % at 5 GiB. Six 1 GiB events cross both
    # once; three more change nothing (the allowance is spent, thresholds already fired).
    await asyncio.to_thread(send_usage_cli, servers, tenant_name, 6, GIB)
    seen = []
    for _ in range(2):
        msg = await crossed.next_msg(timeout=20)
        seen.append(json.loads(msg.data)["data"])
        await msg.ack()
    assert sorted(s["threshold"] for s in seen) == ["allowance:data-5gb:100",
                                                    "allowance:data-5gb:80"]
    assert {s["upsellOffer"] for s in seen} == {"data-boost"}
    assert {s["customerId"] for s in seen} == {customer_id}

    balance = await js.subscribe(f"tg.{tenant_name}.evt.balance.updated", stream="EVENTS",
                                 deliver_policy=DeliverPolicy.NEW)
    await asyncio.to_thread(send_usage_cli, servers, tenant_name, 3, GIB)
    await balance.next_msg(timeout=20)  # the later usage was rated (its balance moved) …
    with pytest.raises(TimeoutError):  # … and no threshold fired again
        await crossed.next_msg(timeout=1)
