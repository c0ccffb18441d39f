"""Live updates over graphql-transport-ws with a real websocket client: a balance change
reaches the customer's subscription; nobody else's credentials or tenant see it, and
subscribers who share an execution never share it across customers or tenants."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets
from nats.aio.client import Client
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from strawberry.types import ExecutionResult

from tests.billing.test_bill_run import TZ, customers, period_for
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tests.integration.test_walking_skeleton import register_and_order
from tests.running import Api, StartEngine, eventually
from tollgate_api.auth import Principal
from tollgate_api.context import Context
from tollgate_api.live import EventHub
from tollgate_api.schema import build_schema
from tollgate_core.billing.run import bill_run
from tollgate_core.bus.nats import connect
from tollgate_core.domain.billing import local_midnight
from tollgate_core.domain.events import DomainEvent, event_subject
from tollgate_core.store.db import Pool, tenant_tx

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


# ------------------------------------------------------------ shared executions (ADR 0009)

ISSUED = "subscription Issued { invoiceIssued { customerId billNo } }"  # no variables


async def metric(api: Api, name: str, tenant: str) -> float:
    """A sample of the API's /metrics for `tenant` (0 when there is none)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(api.url.replace("/graphql", "/metrics"))).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == name and sample.labels.get("tenant") == tenant)


async def subscribe(api: Api, token: str, query: str,
                    variables: dict[str, Any] | None = None, op_id: str = "1"
                    ) -> websockets.ClientConnection:
    ws = await websockets.connect(ws_url(api), subprotocols=[PROTOCOL])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"Authorization": f"Bearer {token}"}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    await ws.send(json.dumps({"id": op_id, "type": "subscribe",
                              "payload": {"query": query, "variables": variables}}))
    return ws


def issued(tenant: str, customer: str, bill_no: str) -> DomainEvent:
    return DomainEvent.new(tenant, "invoice.issued", {
        "invoiceId": str(uuid.uuid4()), "billNo": bill_no, "kind": "invoice",
        "customerId": customer, "periodStart": "2026-10-01", "periodEnd": "2026-10-31",
        "totalMicros": 11_900_000, "taxMicros": 1_900_000, "currency": "EUR",
        "dueDate": "2026-11-14", "state": "issued"})


async def bills(ws: websockets.ClientConnection, count: int) -> list[str]:
    """The bill numbers of the next `count` invoiceIssued results."""
    numbers = []
    for _ in range(count):
        message = await next_message(ws)
        assert message["type"] == "next" and "errors" not in message["payload"], message
        numbers.append(message["payload"]["data"]["invoiceIssued"]["billNo"])
    return numbers


async def test_one_execution_per_audience_never_shared_across_customers_or_tenants(
        api: Api, nats_client: Client, tenant_name: str) -> None:
    """Two customers, two agents and another tenant's agent send the same document with the
    same (no) variables. The agents share one execution per event; each customer has their
    own and sees only their own invoices; the other tenant sees none of them."""
    other = tenant_name + "x"
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    sockets = {
        "alice": await subscribe(api, api.token(tenant_name, alice, ("customer",)), ISSUED),
        "bob": await subscribe(api, api.token(tenant_name, bob, ("customer",)), ISSUED),
        "agent-1": await subscribe(api, api.token(tenant_name, "agent-1"), ISSUED),
        "agent-2": await subscribe(api, api.token(tenant_name, "agent-2"), ISSUED),
        "stranger": await subscribe(api, api.token(other, "agent-1"), ISSUED),
    }
    try:
        async def registered() -> bool:
            return (await metric(api, "tollgate_api_live_listeners", tenant_name) == 4
                    and await metric(api, "tollgate_api_live_listeners", other) == 1)
        await eventually(registered)
        assert await metric(api, "tollgate_api_live_feeds", tenant_name) == 3  # agents share
        assert await metric(api, "tollgate_api_live_feeds", other) == 1
        renders = await metric(api, "tollgate_api_live_renders_total", tenant_name)

        # Alternating customers: each one's next invoice after their first is their own
        # again, so the other's, published in between, never reached them.
        for customer, bill_no in [(alice, "A-1"), (bob, "B-1"), (alice, "A-2"), (bob, "B-2"),
                                  (alice, "A-3")]:
            await nats_client.publish(event_subject(tenant_name, "invoice.issued"),
                                      issued(tenant_name, customer, bill_no).to_bytes())
        await nats_client.publish(event_subject(other, "invoice.issued"),
                                  issued(other, str(uuid.uuid4()), "X-1").to_bytes())

        assert await bills(sockets["alice"], 3) == ["A-1", "A-2", "A-3"]
        assert await bills(sockets["bob"], 2) == ["B-1", "B-2"]
        for agent in ("agent-1", "agent-2"):
            assert await bills(sockets[agent], 5) == ["A-1", "B-1", "A-2", "B-2", "A-3"]
        assert await bills(sockets["stranger"], 1) == ["X-1"]  # nothing of the other tenant
        # 15 results sent, 10 executions: 3 for alice, 2 for bob, 5 for both agents.
        assert await metric(api, "tollgate_api_live_renders_total", tenant_name) - renders == 10
    finally:
        for ws in sockets.values():
            await ws.close()


async def test_subscribers_of_one_customer_share_no_execution_across_audiences(
        api: Api, pool: Pool, nats_client: Client, tenant_name: str) -> None:
    """An agent and a customer follow the same customer with the same document and
    variables. `invoice` answers per audience (a customer reads only their own invoices), so
    each audience has its own execution: the customer is never sent what the agent may see.
    (The event is crafted to name another customer's invoice.)"""
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    (mine, _), (theirs, _) = await customers(pool, tenant_name, 2,
                                             local_midnight(period.start, TZ))
    await bill_run(pool, tenant_name, period)
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        their_invoice = str(await conn.fetchval(
            "SELECT invoice_id FROM invoices WHERE customer_id = $1", theirs))
    document = ("subscription Issued($id: UUID) {"
                " invoiceIssued(customerId: $id) { billNo invoice { id } } }")
    variables = {"id": str(mine)}

    async def listeners(count: int) -> None:
        async def reached() -> bool:
            return await metric(api, "tollgate_api_live_listeners", tenant_name) == count
        await eventually(reached)

    agent = await subscribe(api, api.token(tenant_name), document, variables)
    await listeners(1)  # the agent's execution exists first
    me = await subscribe(api, api.token(tenant_name, str(mine), ("customer",)), document,
                         variables)
    try:
        await listeners(2)
        assert await metric(api, "tollgate_api_live_feeds", tenant_name) == 2
        event = issued(tenant_name, str(mine), "FORGED-1")
        event.data["invoiceId"] = their_invoice
        await nats_client.publish(event_subject(tenant_name, "invoice.issued"), event.to_bytes())

        seen = (await next_message(agent))["payload"]
        assert seen == {"data": {"invoiceIssued": {"billNo": "FORGED-1",
                                                   "invoice": {"id": their_invoice}}}}, seen
        mine_seen = (await next_message(me))["payload"]
        assert mine_seen["data"] is None, mine_seen
        assert [e["extensions"]["code"] for e in mine_seen["errors"]] == ["NOT_FOUND"]
    finally:
        await agent.close()
        await me.close()


async def test_a_completed_or_closed_subscription_leaves_its_feed(
        api: Api, nats_client: Client, tenant_name: str) -> None:
    async def count(name: str, value: float) -> None:
        async def reached() -> bool:
            return await metric(api, name, tenant_name) == value
        await eventually(reached)

    customer = str(uuid.uuid4())
    ws = await subscribe(api, api.token(tenant_name), BALANCE, {"id": customer})
    try:
        await count("tollgate_api_live_listeners", 1)
        assert await metric(api, "tollgate_api_live_feeds", tenant_name) == 1
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        await count("tollgate_api_live_listeners", 0)
        await count("tollgate_api_live_feeds", 0)

        # The id is free again; the new operation gets the next change, under its id.
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": BALANCE, "variables": {"id": customer}}}))
        await count("tollgate_api_live_listeners", 1)
        await nats_client.publish(event_subject(tenant_name, "balance.updated"), DomainEvent.new(
            tenant_name, "balance.updated", {"customerId": customer, "balanceMicros": 2_500_000,
                                             "currency": "EUR", "cause": "topUp"}).to_bytes())
        assert await next_message(ws) == {"id": "1", "type": "next", "payload": {"data": {
            "balanceChanged": {"customerId": customer, "cause": "topUp",
                               "balance": {"amount": "2.5", "currency": "EUR"}}}}}
    finally:
        await ws.close()
    await count("tollgate_api_live_listeners", 0)
    await count("tollgate_api_live_feeds", 0)


async def test_in_process_subscriptions_get_only_their_customers_events(
        servers: Servers, pool: Pool, nats_client: Client, tenant_name: str) -> None:
    """Without graphql-transport-ws (strawberry's `subscribe`, the legacy graphql-ws
    protocol) the resolver yields each event itself; the hub wakes it only for its own
    customer's."""
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    nc = await connect(servers.nats_url, name="test-hub")
    hub = EventHub()
    await hub.start(nc)
    try:
        context = Context(pool=pool, hub=hub,
                          caller=Principal(tenant_name, alice, frozenset({"customer"})))
        stream = await build_schema().subscribe(BALANCE, {"id": alice}, context)
        assert not isinstance(stream, ExecutionResult), stream
        first = asyncio.ensure_future(anext(stream))

        def listening() -> bool:
            return REGISTRY.get_sample_value("tollgate_api_live_listeners",
                                             {"tenant": tenant_name}) == 1

        async def registered() -> bool:
            assert not first.done(), first
            return listening()
        await eventually(registered)
        for customer, micros in [(bob, 1_000_000), (alice, 2_000_000)]:
            await nats_client.publish(event_subject(tenant_name, "balance.updated"),
                                      DomainEvent.new(tenant_name, "balance.updated", {
                                          "customerId": customer, "balanceMicros": micros,
                                          "currency": "EUR", "cause": "usage"}).to_bytes())
        result = await asyncio.wait_for(first, 15)
        assert result.errors is None, result.errors
        assert result.data == {"balanceChanged": {
            "customerId": alice, "cause": "usage", "balance": {"amount": "2", "currency": "EUR"}}}
        await stream.aclose()
        assert not listening()
    finally:
        await hub.stop()
        await nc.close()
