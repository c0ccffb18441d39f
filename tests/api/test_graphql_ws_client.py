"""The subscription protocol as another implementation speaks it: the `graphql-ws` npm
client (the graphql-transport-ws reference) subscribes to `balanceChanged` with its bearer
token in the connection_init payload, and receives the change a top-up makes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_live_updates import BALANCE, TOP_UP, ws_url
from tests.factories import install_example_catalog
from tests.harness.node import script
from tests.integration.test_walking_skeleton import register_and_order
from tests.running import Api, StartEngine, eventually
from tollgate_core.store.db import Pool


async def live_listeners(api: Api, tenant: str) -> float:
    """The server's own count of live-update listeners of `tenant` (Prometheus gauge)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(api.url.replace("/graphql", "/metrics"))).text
    for family in text_string_to_metric_families(text):
        if family.name == "tollgate_api_live_listeners":
            return sum(s.value for s in family.samples if s.labels.get("tenant") == tenant)
    return 0.0


async def next_line(process: asyncio.subprocess.Process, wait_s: float = 20) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), wait_s)
    if not line:
        assert process.stderr is not None
        raise AssertionError(f"node exited: {(await process.stderr.read()).decode()}")
    message: dict[str, Any] = json.loads(line)
    return message


async def test_the_graphql_ws_client_receives_a_balance_change(
        api: Api, pool: Pool, charging: StartEngine, npm_modules: Path,
        tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register_and_order(api, agent)
    await charging(tenant_name)  # its outbox relay publishes balance.updated
    customer = api.token(tenant_name, subject=customer_id, roles=("customer",))
    async with script(npm_modules, "subscribe.mjs", ws_url(api), customer, BALANCE,
                      json.dumps({"id": customer_id}), "1") as node:
        assert await next_line(node) == {"event": "connected"}

        async def subscribed() -> bool:
            return await live_listeners(api, tenant_name) >= 1

        await eventually(subscribed)  # the change happens after the subscription exists
        result = await api.graphql(agent, TOP_UP, {"id": customer_id, "key": "ws-1"})
        assert result["data"]["topUp"]["__typename"] == "TopUpSuccess", result

        assert await next_line(node) == {"event": "next", "payload": {"data": {
            "balanceChanged": {"customerId": customer_id, "cause": "topUp",
                               "balance": {"amount": "10", "currency": "EUR"}}}}}
        assert await next_line(node) == {"event": "done"}
        assert await asyncio.wait_for(node.wait(), 20) == 0


async def test_the_graphql_ws_client_is_refused_with_a_forged_token(
        api: Api, npm_modules: Path, tenant_name: str) -> None:
    async with script(npm_modules, "subscribe.mjs", ws_url(api), "forged", BALANCE,
                      json.dumps({"id": "00000000-0000-0000-0000-000000000000"}), "1") as node:
        message = await next_line(node)
        assert message["event"] == "error"
        assert "4403" in message["error"], message  # Forbidden, from connection_init
        assert await asyncio.wait_for(node.wait(), 20) == 1
