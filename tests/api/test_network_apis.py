"""Network API metering over real HTTP (ADR 0015): partner API keys call
`requestQualityOnDemand` on two API servers (replicas) sharing PostgreSQL; every call is a
call record and an exact ledger transfer, quotas and per-second limits bind both replicas,
refusals leave nothing behind, and the network request goes out through the outbox.

Time is a clock the test steps (the servers meter at its time), never a sleep."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import websockets
from nats.js import JetStreamContext

from tests.conftest import Servers
from tests.factories import example_resources
from tests.running import Api, StartEngine, serve_api
from tollgate_core.domain.ledger import transfer_id
from tollgate_core.local.apply import apply_resources
from tollgate_core.resources import parse_resource
from tollgate_core.store.db import Pool, tenant_tx

PRICE_MICROS = 12_500  # "0.0125" per call

QOD = """
mutation Qod($msisdn: String!, $profile: QosProfile!, $seconds: Int!, $key: String!) {
  requestQualityOnDemand(msisdn: $msisdn, profile: $profile, durationSeconds: $seconds,
                         idempotencyKey: $key) {
    __typename
    ... on QualityOnDemandSession { sessionId callId requestedAt repeated
                                    charge { amountMicros amount currency } }
    ... on QuotaExceededError { code message quota resetsAt }
    ... on ForbiddenError { code message }
    ... on ValidationError { code field }
    ... on ConflictError { code field }
  }
}"""
USAGE = """
query Usage($from: DateTime!, $to: DateTime!, $first: Int!, $after: String) {
  partner {
    id
    usage(from: $from, to: $to) {
      calls charge { amountMicros currency }
      byApi { api calls charge { amountMicros } }
      records(first: $first, after: $after) {
        edges { node { id api operation calledAt catalogRevision sessionId
                       charge { amountMicros } } }
        pageInfo { hasNextPage endCursor }
      }
    }
  }
}"""
NOVEMBER = {"from": "2026-11-01T00:00:00+01:00", "to": "2026-12-01T00:00:00+01:00"}
DECEMBER = {"from": "2026-12-01T00:00:00+01:00", "to": "2027-01-01T00:00:00+01:00"}


@dataclass
class StepClock:
    """The time the API servers meter calls at; the test moves it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def agreement(tenant: str, name: str, network_apis: list[dict[str, Any]]) -> Any:
    return parse_resource({
        "apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "PartnerAgreement",
        "metadata": {"name": name},
        "spec": {"tenantRef": {"name": tenant},
                 "partner": {"id": name, "displayName": name.title(),
                             "contactEmail": f"billing@{name}.example",
                             "settlementCurrency": "EUR"},
                 "role": "apiConsumer",
                 "revenueShare": {"model": "percentage", "percent": "0"},
                 "networkApis": network_apis}})


LAB_APIS = [{"name": "qod", "pricePerCall": "0.0125", "rateLimitPerSecond": 3,
             "monthlyQuota": 5}]


async def install(pool: Pool, tenant: str, extra: list[Any]) -> dict[str, str]:
    """The example catalog (Europe/Berlin, EUR) plus `extra` agreements; their API keys."""
    report = await apply_resources(pool, [*example_resources(tenant), *extra])
    assert not report.errors, report.errors
    return report.partner_keys[tenant]


@asynccontextmanager
async def replicas(servers: Servers, clock: StepClock, count: int = 2
                   ) -> AsyncIterator[list[Api]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serve_api(servers, clock=clock))
               for _ in range(count)]


async def call(api: Api, headers: dict[str, str], query: str,
               variables: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(api.url, json={"query": query, "variables": variables},
                                 headers=headers)


async def qod(api: Api, headers: dict[str, str], key: str, msisdn: str = "491700000001",
              seconds: int = 600) -> dict[str, Any]:
    response = await call(api, headers, QOD, {"msisdn": msisdn, "profile": "QOS_M",
                                              "seconds": seconds, "key": key})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["data"]["requestQualityOnDemand"]
    return result


async def usage(api: Api, headers: dict[str, str], period: dict[str, str], first: int = 20,
                after: str | None = None) -> dict[str, Any]:
    response = await call(api, headers, USAGE, {**period, "first": first, "after": after})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["partner"]["usage"]
    return result


def api_key(key: str) -> dict[str, str]:
    return {"Authorization": f"ApiKey {key}"}


async def ledger(pool: Pool, tenant: str) -> tuple[dict[str, int], list[Any], list[Any]]:
    """Balances, network API transfers and call records of the tenant."""
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        balances = {r["account_id"]: r["balance_micros"] for r in await conn.fetch(
            "SELECT account_id, balance_micros FROM ledger_accounts")}
        transfers = await conn.fetch(
            "SELECT transfer_id, debit_account, credit_account, amount_micros, currency,"
            " cause_id FROM transfers WHERE code = 'networkApi'")
        calls = await conn.fetch("SELECT * FROM network_api_calls ORDER BY called_at")
        # Invariant 2: every balance is the sum of its transfers.
        drift = await conn.fetch(
            "SELECT a.account_id FROM ledger_accounts a LEFT JOIN LATERAL ("
            " SELECT coalesce(sum(CASE WHEN t.credit_account = a.account_id THEN"
            " t.amount_micros ELSE -t.amount_micros END), 0) AS total FROM transfers t"
            " WHERE a.account_id IN (t.debit_account, t.credit_account)) s ON true"
            " WHERE a.balance_micros <> s.total")
    assert drift == [], drift
    return balances, transfers, calls


# ------------------------------------------------------------------ metering


async def test_partner_calls_are_counted_rated_and_limited_across_replicas(
        servers: Servers, pool: Pool, js: JetStreamContext, charging: StartEngine,
        tenant_name: str) -> None:
    keys = await install(pool, tenant_name, [agreement(tenant_name, "lab", LAB_APIS)])
    lab = keys["lab"]
    clock = StepClock(datetime(2026, 11, 23, 10, 0, 0, 250_000, tzinfo=UTC))
    async with replicas(servers, clock) as (a, b):
        # Three calls in one second, through both replicas and both header forms.
        first = await qod(a, api_key(lab), "k1")
        second = await qod(b, {"X-Api-Key": lab}, "k2", msisdn="+491700000002")
        third = await qod(a, api_key(lab), "k3")
        sessions = [first, second, third]
        assert [s["__typename"] for s in sessions] == ["QualityOnDemandSession"] * 3
        assert all(s["charge"] == {"amountMicros": PRICE_MICROS, "amount": "0.0125",
                                   "currency": "EUR"} and s["repeated"] is False
                   for s in sessions)
        assert len({s["sessionId"] for s in sessions}) == 3

        # The fourth in the same second is over rateLimitPerSecond (3), on either replica.
        limited = await call(b, api_key(lab), QOD, {"msisdn": "491700000001",
                                                    "profile": "QOS_M", "seconds": 600,
                                                    "key": "k4"})
        assert limited.status_code == 429, limited.text
        assert limited.headers["retry-after"] == "1"
        error = limited.json()["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["limitPerSecond"] == 3

        # A repeat answers the first call: not counted, not limited, not charged again.
        repeat = await qod(b, api_key(lab), "k1")
        assert repeat["sessionId"] == first["sessionId"] and repeat["repeated"] is True
        conflict = await qod(a, api_key(lab), "k1", msisdn="491700000099")
        assert conflict == {"__typename": "ConflictError", "code": "CONFLICT",
                            "field": "idempotencyKey"}
        invalid = await qod(a, api_key(lab), "k5", seconds=0)
        assert invalid == {"__typename": "ValidationError", "code": "VALIDATION",
                           "field": "durationSeconds"}

        # The next second: two more reach the monthly quota (5), the sixth is refused.
        clock.now += timedelta(seconds=1)
        sessions += [await qod(b, api_key(lab), "k4"), await qod(a, api_key(lab), "k6")]
        assert all(s["__typename"] == "QualityOnDemandSession" for s in sessions)
        over = await qod(b, api_key(lab), "k7")
        assert over == {"__typename": "QuotaExceededError", "code": "QUOTA_EXCEEDED",
                        "message": over["message"], "quota": 5,
                        "resetsAt": "2026-12-01T00:00:00+01:00"}
        clock.now += timedelta(days=3)  # still November in Berlin: still refused
        assert (await qod(a, api_key(lab), "k7"))["__typename"] == "QuotaExceededError"

        # 23:30 UTC on 30 November is December in Berlin: a new month, a new quota.
        clock.now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
        december = await qod(a, api_key(lab), "k7")
        assert december["__typename"] == "QualityOnDemandSession"

        november_usage = await usage(a, api_key(lab), NOVEMBER, first=2)
        assert november_usage["calls"] == 5
        assert november_usage["charge"] == {"amountMicros": 5 * PRICE_MICROS,
                                            "currency": "EUR"}
        assert november_usage["byApi"] == [{"api": "qod", "calls": 5,
                                            "charge": {"amountMicros": 5 * PRICE_MICROS}}]
        page = november_usage["records"]
        assert page["pageInfo"]["hasNextPage"] is True
        rest = (await usage(b, api_key(lab), NOVEMBER, first=10,
                            after=page["pageInfo"]["endCursor"]))["records"]
        assert rest["pageInfo"]["hasNextPage"] is False
        records = [e["node"] for e in page["edges"] + rest["edges"]]
        # Newest first: the two calls of the later second, then the three of the first.
        assert [{r["sessionId"] for r in records[:2]}, {r["sessionId"] for r in records[2:]}] \
            == [{s["sessionId"] for s in sessions[3:]}, {s["sessionId"] for s in sessions[:3]}]
        assert len(records) == 5
        assert all(r["api"] == "qod" and r["operation"] == "requestQualityOnDemand"
                   and r["charge"]["amountMicros"] == PRICE_MICROS
                   and r["catalogRevision"] == 1 for r in records)
        december_usage = await usage(b, api_key(lab), DECEMBER)
        assert december_usage["calls"] == 1
        assert [e["node"]["sessionId"] for e in december_usage["records"]["edges"]] == [
            december["sessionId"]]

    # The ledger holds exactly one transfer per call, id derived from the call.
    balances, transfers, calls = await ledger(pool, tenant_name)
    assert len(calls) == 6
    assert {str(c["call_id"]) for c in calls} == {s["callId"] for s in [*sessions, december]}
    assert {t["transfer_id"] for t in transfers} == {
        transfer_id(str(c["call_id"]), "networkApi") for c in calls}
    assert all(t["debit_account"] == "receivable:partner:lab"
               and t["credit_account"] == "revenue:networkApi"
               and t["amount_micros"] == PRICE_MICROS and t["currency"] == "EUR"
               for t in transfers)
    assert {t["cause_id"] for t in transfers} == {str(c["call_id"]) for c in calls}
    assert balances["receivable:partner:lab"] == -6 * PRICE_MICROS
    assert balances["revenue:networkApi"] == 6 * PRICE_MICROS
    assert sum(balances.values()) == 0
    # Call records hold no personal data; the MSISDN stays with the session request.
    assert all("49170000000" not in str(value) for c in calls for value in c.values())
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        stored = {str(r["session_id"]): r["msisdn"] for r in await conn.fetch(
            "SELECT session_id, msisdn FROM qod_sessions")}
        meters = {(r["month"].isoformat(), r["calls"]) for r in await conn.fetch(
            "SELECT month, calls FROM network_api_meters WHERE agreement = 'lab'")}
    assert stored[second["sessionId"]] == "+491700000002" and len(stored) == 6
    assert meters == {("2026-11-01", 5), ("2026-12-01", 1)}

    # The network is asked once per session, on the tenant's OSS subject (outbox relay).
    await charging(tenant_name)
    subscription = await js.pull_subscribe(f"tg.{tenant_name}.oss.provision.request",
                                           stream="OSS")
    received: dict[str, dict[str, Any]] = {}
    while len(received) < 6:
        for message in await subscription.fetch(6, timeout=15):
            envelope = json.loads(message.data)
            assert message.headers is not None
            assert message.headers["Nats-Msg-Id"] == envelope["id"]
            received[envelope["data"]["sessionId"]] = envelope
            await message.ack()
    assert set(received) == set(stored)
    sample = received[second["sessionId"]]
    assert sample["type"] == "dev.tollgate.oss.provision.request.v1"
    assert sample["tenant"] == tenant_name
    assert sample["data"] == {"kind": "qodSession", "sessionId": second["sessionId"],
                              "agreement": "lab", "partnerId": "lab",
                              "msisdn": "+491700000002", "profile": "QOS_M",
                              "durationSeconds": 600}


async def test_concurrent_calls_on_two_replicas_never_pass_the_quota(
        servers: Servers, pool: Pool, tenant_name: str) -> None:
    keys = await install(pool, tenant_name, [agreement(tenant_name, "burst", [
        {"name": "qod", "pricePerCall": "0.000001", "rateLimitPerSecond": 1000,
         "monthlyQuota": 4}])])
    clock = StepClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    async with replicas(servers, clock) as (a, b):
        results = await asyncio.gather(*(
            qod((a, b)[i % 2], api_key(keys["burst"]), f"c{i}") for i in range(12)))
    kinds = sorted(r["__typename"] for r in results)
    assert kinds == ["QualityOnDemandSession"] * 4 + ["QuotaExceededError"] * 8
    balances, transfers, calls = await ledger(pool, tenant_name)
    assert len(calls) == 4 and len(transfers) == 4
    assert balances["revenue:networkApi"] == 4 and sum(balances.values()) == 0


# ------------------------------------------------------------------ refusals


async def test_only_a_partner_key_whose_agreement_has_the_api_may_call_it(
        servers: Servers, pool: Pool, tenant_name: str) -> None:
    keys = await install(pool, tenant_name, [
        agreement(tenant_name, "lab", LAB_APIS),
        agreement(tenant_name, "plain", []),
        agreement(tenant_name, "locator", [{"name": "location", "pricePerCall": "0.01"}])])
    clock = StepClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    async with serve_api(servers, clock=clock) as api:
        for name in ("plain", "locator"):
            refused = await qod(api, api_key(keys[name]), f"{name}-1")
            assert refused["__typename"] == "ForbiddenError", refused
            assert refused["code"] == "FORBIDDEN" and "'qod'" in refused["message"]
        customer = api.token(tenant_name, subject=str(uuid.uuid4()), roles=("customer",))
        for token in (customer, api.token(tenant_name),
                      api.token(tenant_name, subject="root", roles=("admin",))):
            refused = await qod(api, {"Authorization": f"Bearer {token}"}, "t-1")
            assert refused["__typename"] == "ForbiddenError", refused

        # Unknown keys are refused at the door, as HTTP 401, in either header.
        for headers in (api_key(keys["lab"] + "x"), {"X-Api-Key": "nope"},
                        {"X-Api-Key": keys["lab"], "Authorization": f"ApiKey {keys['lab']}"}):
            response = await call(api, headers, QOD, {"msisdn": "491700000001",
                                                      "profile": "QOS_M", "seconds": 60,
                                                      "key": "x"})
            assert response.status_code == 401, response.text
            assert "ApiKey" in response.headers["www-authenticate"]
            assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

        # Over graphql-transport-ws the key travels in connection_init, checked the same way.
        url = api.url.replace("http://", "ws://")
        ws = await websockets.connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        try:
            await ws.send(json.dumps({"type": "connection_init",
                                      "payload": {"X-Api-Key": keys["lab"]}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                      "payload": {"query": "{ partner { id } }"}}))
            message = json.loads(await asyncio.wait_for(ws.recv(), 15))
            assert message["payload"] == {"data": {"partner": {"id": "lab"}}}, message
        finally:
            await ws.close()
        ws = await websockets.connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": "ApiKey forged"}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403

    # Nothing refused was recorded, counted or charged.
    _, transfers, calls = await ledger(pool, tenant_name)
    assert (calls, transfers) == ([], [])
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM network_api_meters") == 0


async def test_another_tenants_key_sees_and_counts_nothing_of_this_tenant(
        servers: Servers, pool: Pool, tenant_name: str) -> None:
    other = tenant_name + "b"
    ours = await install(pool, tenant_name, [agreement(tenant_name, "lab", LAB_APIS)])
    theirs = await install(pool, other, [agreement(other, "lab", LAB_APIS)])
    clock = StepClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    async with serve_api(servers, clock=clock) as api:
        mine = [await qod(api, api_key(ours["lab"]), f"a{i}") for i in range(3)]
        assert all(s["__typename"] == "QualityOnDemandSession" for s in mine)
        # Same agreement name, same idempotency key, other tenant: its own, fresh call.
        their_call = await qod(api, api_key(theirs["lab"]), "a0")
        assert their_call["__typename"] == "QualityOnDemandSession"
        assert their_call["sessionId"] not in {s["sessionId"] for s in mine}
        their_usage = await usage(api, api_key(theirs["lab"]), NOVEMBER)
        assert their_usage["calls"] == 1
        assert [e["node"]["sessionId"] for e in their_usage["records"]["edges"]] == [
            their_call["sessionId"]]
        agent_b = await call(api, {"Authorization": f"Bearer {api.token(other)}"},
                             '{ partner(id: "lab") { usage(from: "2026-11-01T00:00:00Z",'
                             ' to: "2026-12-01T00:00:00Z") { calls } } }', {})
        assert agent_b.json()["data"]["partner"]["usage"]["calls"] == 1
        our_usage = await usage(api, api_key(ours["lab"]), NOVEMBER)
        assert our_usage["calls"] == 3
        # Their quota is theirs: two more calls of ours leave them at their first.
        clock.now += timedelta(seconds=1)
        assert (await qod(api, api_key(ours["lab"]), "a3"))["__typename"] == \
            "QualityOnDemandSession"
    balances_a, transfers_a, calls_a = await ledger(pool, tenant_name)
    balances_b, transfers_b, calls_b = await ledger(pool, other)
    assert (len(calls_a), len(calls_b)) == (4, 1)
    assert (len(transfers_a), len(transfers_b)) == (4, 1)
    assert balances_a["receivable:partner:lab"] == -4 * PRICE_MICROS
    assert balances_b["receivable:partner:lab"] == -PRICE_MICROS
    async with tenant_tx(pool, other, readonly=True) as conn:
        assert await conn.fetchval("SELECT calls FROM network_api_meters") == 1
