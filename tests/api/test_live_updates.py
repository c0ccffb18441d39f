"""Live updates over graphql-transport-ws with a real websocket client: a balance change
reaches the customer's subscription; nobody else's credentials or tenant see it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets

from tests.factories import install_example_catalog
from tests.integration.test_walking_skeleton import register_and_order
from tests.running import Api, StartEngine
from tollgate_core.store.db import Pool

PROTOCOL = "graphql-transport-ws"
BALANCE = ("subscription Balance($id: UUID!) { balanceChanged(customerId: $id) {"
           " customerId cause balance { amount currency } } }")
TOP_UP = """mutation TopUp($id: UUID!, $key: String!) {
  topUp(input: {customerId: $id, amount: "10.00"}, idempotencyKey: $key) { __typename } }"""


def ws_url(api: Api) -> str:
    return api.url.replace("http://", "ws://")


async def open_subscription(api: Api, token: str, customer_id: str
                            ) -> websockets.ClientConnection:
    ws = await websockets.connect(ws_url(api), subprotocols=[PROTOCOL])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"Authorization": f"Bearer {token}"}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
        "query": BALANCE, "variables": {"id": customer_id}}}))
    return ws


async def next_message(ws: websockets.ClientConnection, wait_s: float = 15) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), wait_s))
    return message


async def test_a_top_up_reaches_the_customers_balance_subscription(
        api: Api, pool: Pool, charging: StartEngine, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register_and_order(api, agent)
    await charging(tenant_name)  # its outbox relay publishes the event
    customer = api.token(tenant_name, subject=customer_id, roles=("customer",))
    ws = await open_subscription(api, customer, customer_id)
    try:
        await asyncio.sleep(0.2)  # the subscription is registered before the change
        result = await api.graphql(agent, TOP_UP, {"id": customer_id, "key": "t1"})
        assert result["data"]["topUp"]["__typename"] == "TopUpSuccess"
        message = await next_message(ws)
        assert message["type"] == "next"
        assert message["payload"]["data"]["balanceChanged"] == {
            "customerId": customer_id, "cause": "topUp",
            "balance": {"amount": "10", "currency": "EUR"}}
    finally:
        await ws.close()


async def test_another_customer_cannot_subscribe_and_a_bad_token_is_refused(
        api: Api, pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    customer_id = await register_and_order(api, api.token(tenant_name))
    stranger = api.token(tenant_name, subject=str(uuid.uuid4()), roles=("customer",))
    ws = await open_subscription(api, stranger, customer_id)
    try:
        message = await next_message(ws)
        # An execution error: a result with `errors` and no data, then the operation ends.
        assert message["type"] == "next"
        assert message["payload"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert message["payload"].get("data") is None
    finally:
        await ws.close()

    ws = await websockets.connect(ws_url(api), subprotocols=[PROTOCOL])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"Authorization": "Bearer forged"}}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_events_of_another_tenant_never_reach_a_subscriber(
        api: Api, pool: Pool, charging: StartEngine, tenant_name: str) -> None:
    other = tenant_name + "x"
    await install_example_catalog(pool, tenant_name)
    await install_example_catalog(pool, other)
    mine = await register_and_order(api, api.token(tenant_name))
    theirs = await register_and_order(api, api.token(other))
    await charging(tenant_name)
    await charging(other)
    ws = await open_subscription(api, api.token(tenant_name), theirs)  # their id, my tenant
    try:
        await asyncio.sleep(0.2)
        await api.graphql(api.token(other), TOP_UP, {"id": theirs, "key": "x"})
        await api.graphql(api.token(tenant_name), TOP_UP, {"id": mine, "key": "y"})
        try:
            message = await next_message(ws, wait_s=2)
        except TimeoutError:
            message = None
        assert message is None, message
    finally:
        await ws.close()
