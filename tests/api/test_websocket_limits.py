"""Websocket limits per credential (ADR 0009), with a real websocket client against uvicorn:
a connection takes a token of the caller's rate-limit bucket (the one its HTTP requests
use), a credential holds a bounded number of connections open, and a connection a bounded
number of subscriptions. Refused connections are closed with 1013 "Try Again Later" and a
reason naming the limit.

Each test runs its own server with a tight limit: a burst of 3 and one token per 100 s, so
no connection of the test can earn a token back however slow the machine is."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import Servers
from tests.running import Api, eventually, serve_api

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
BALANCE = ("subscription Balance($id: UUID!) { balanceChanged(customerId: $id) {"
           " customerId } }")


def ws_url(api: Api) -> str:
    return api.url.replace("http://", "ws://")


async def connect(api: Api, token: str, protocol: str = TRANSPORT_WS
                  ) -> tuple[websockets.ClientConnection, dict[str, Any]]:
    """Open a connection and send connection_init; the server's first answer."""
    ws = await websockets.connect(ws_url(api), subprotocols=[protocol])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"Authorization": f"Bearer {token}"}}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 15))


async def refusal(api: Api, token: str, protocol: str = TRANSPORT_WS) -> tuple[int, str]:
    """Connect expecting to be closed: the close code and reason."""
    ws = await websockets.connect(ws_url(api), subprotocols=[protocol])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"Authorization": f"Bearer {token}"}}))

    async def until_closed() -> None:
        while True:
            await asyncio.wait_for(ws.recv(), 15)

    with pytest.raises(websockets.ConnectionClosed) as closed:
        await until_closed()
    assert closed.value.rcvd is not None, closed.value
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def metric(api: Api, reason: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(api.url.replace("/graphql", "/metrics"))).text
    prefix = f'tollgate_api_ws_refused_total{{reason="{reason}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines()
               if line.startswith(prefix))


async def test_connections_take_tokens_of_the_callers_bucket(servers: Servers,
                                                             tenant_name: str) -> None:
    async with serve_api(servers, rate_limit_per_s=0.01, rate_limit_burst=3) as api:
        alice = api.token(tenant_name, subject="alice")
        opened = []
        for _ in range(3):
            ws, answer = await connect(api, alice)
            assert answer["type"] == "connection_ack"
            opened.append(ws)
        code, reason = await refusal(api, alice)
        assert code == 1013, (code, reason)
        assert reason.startswith("RATE_LIMITED: ") and "retry after" in reason, reason
        # The legacy graphql-ws protocol is refused the same way, after a connection_error.
        ws, answer = await connect(api, alice, LEGACY_WS)
        assert answer["type"] == "connection_error"
        assert answer["payload"]["message"].startswith("RATE_LIMITED: ")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 15)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # One bucket per credential: alice's HTTP requests are refused too, bob still gets in.
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(api.url, json={"query": "{ __typename }"},
                                         headers={"Authorization": f"Bearer {alice}"})
        assert response.status_code == 429
        ws, answer = await connect(api, api.token(tenant_name, subject="bob"))
        assert answer["type"] == "connection_ack"
        opened.append(ws)
        # Connections already open are not affected: alice's first one still answers.
        await opened[0].send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(opened[0].recv(), 15))["type"] == "pong"
        for ws in opened:
            await ws.close()

        # A bad credential is counted against its address before it is refused (4403),
        # as over HTTP: guessing tokens costs the guesser its bucket.
        codes = [(await refusal(api, "forged.token.value"))[0] for _ in range(4)]
        assert codes == [4403, 4403, 4403, 1013], codes
        assert await metric(api, "rateLimited") >= 3


async def test_a_credential_holds_a_bounded_number_of_connections(servers: Servers,
                                                                  tenant_name: str) -> None:
    async with serve_api(servers, ws_connections_per_credential=2) as api:
        alice = api.token(tenant_name, subject="alice")
        first, answer = await connect(api, alice)
        assert answer["type"] == "connection_ack"
        second, answer = await connect(api, alice)
        assert answer["type"] == "connection_ack"
        code, reason = await refusal(api, alice)
        assert (code, reason) == (1013, "TOO_MANY_CONNECTIONS: at most 2 open per "
                                        "credential; close one")
        # Another credential of the same tenant, or the same subject in another tenant,
        # has its own connections.
        for other in (api.token(tenant_name, subject="bob"),
                      api.token(tenant_name + "x", subject="alice")):
            ws, answer = await connect(api, other)
            assert answer["type"] == "connection_ack"
            await ws.close()
        assert await metric(api, "tooManyConnections") >= 1

        # A closed connection gives its slot back (once the server has seen it close).
        await first.close()
        reopened: list[websockets.ClientConnection] = []

        async def admitted() -> bool:
            try:
                ws, answer = await connect(api, alice)
            except websockets.ConnectionClosed:
                return False  # refused: the server has not seen the close yet
            assert answer["type"] == "connection_ack"
            reopened.append(ws)
            return True

        await eventually(admitted)
        assert len(reopened) == 1
        code, _ = await refusal(api, alice)
        assert code == 1013  # two open again: second and the reopened one
        for ws in (second, *reopened):
            await ws.close()


async def test_a_connection_holds_a_bounded_number_of_subscriptions(servers: Servers,
                                                                    tenant_name: str) -> None:
    async with serve_api(servers, ws_operations_per_connection=3) as api:
        customer = str(uuid.uuid4())
        token = api.token(tenant_name, subject=customer, roles=("customer",))
        ws, answer = await connect(api, token)
        assert answer["type"] == "connection_ack"

        async def subscribe(operation: str) -> None:
            await ws.send(json.dumps({"id": operation, "type": "subscribe", "payload": {
                "query": BALANCE, "variables": {"id": customer}}}))

        async def after_ping() -> list[dict[str, Any]]:
            """Messages the server sent before answering a ping (it answers in order)."""
            await ws.send(json.dumps({"type": "ping"}))
            seen = []
            while (message := json.loads(await asyncio.wait_for(ws.recv(), 15)))["type"] \
                    != "pong":
                seen.append(message)
            return seen

        for operation in ("1", "2", "3"):
            await subscribe(operation)
        assert await after_ping() == []
        await subscribe("4")
        assert await after_ping() == [{"id": "4", "type": "error", "payload": [{
            "message": "at most 3 subscriptions at once on one connection: complete one "
                       "first",
            "extensions": {"code": "SUBSCRIPTION_LIMIT", "limit": 3}}]}]
        # The connection stays open; completing one makes room for another.
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        await subscribe("5")
        assert await after_ping() == []
        await subscribe("6")
        assert [m["payload"][0]["extensions"]["code"] for m in await after_ping()] == [
            "SUBSCRIPTION_LIMIT"]
        assert await metric(api, "subscriptionLimit") >= 2
        await ws.close()
