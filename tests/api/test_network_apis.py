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

from tests.api.test_customer_care import CANCEL, ERASE
from tests.conftest import Servers
from tests.factories import example_resources
from tests.integration.test_walking_skeleton import register_and_order
from tests.running import Api, StartEngine, serve_api
from tollgate_core.domain.ledger import transfer_id
from tollgate_core.local.apply import apply_resources
from tollgate_core.resources import parse_resource
from tollgate_core.settlement.statements import run_statements
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


TIERED_APIS = [{"name": "qod", "rateLimitPerSecond": 100, "tiers": [
    {"from": 0, "to": 3, "pricePerCall": "0.01"},
    {"from": 3, "to": 5, "pricePerCall": "0.005"},
    {"from": 5, "pricePerCall": "0.001"}]}]
TIER_PRICES = [10_000, 10_000, 10_000, 5_000, 5_000, 1_000]
"""Worked example: calls 1–3 of a month at 0.01 EUR, 4–5 at 0.005, then 0.001 each. Six
calls in November: 3 × 10,000 + 2 × 5,000 + 1 × 1,000 = 41,000 micros; December starts
again at 10,000."""


async def test_tiered_prices_follow_the_calls_number_in_its_month(
        servers: Servers, pool: Pool, tenant_name: str) -> None:
    keys = await install(pool, tenant_name, [agreement(tenant_name, "tiers", TIERED_APIS)])
    headers = api_key(keys["tiers"])
    clock = StepClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    async with replicas(servers, clock) as (a, b):
        terms = await call(a, headers, "{ partner { networkApis { name pricePerCall { amount }"
                           " tiers { from to pricePerCall { amountMicros currency } } } } }",
                           {})
        assert terms.json()["data"]["partner"]["networkApis"] == [{
            "name": "qod", "pricePerCall": None, "tiers": [
                {"from": 0, "to": 3, "pricePerCall": {"amountMicros": 10_000,
                                                      "currency": "EUR"}},
                {"from": 3, "to": 5, "pricePerCall": {"amountMicros": 5_000,
                                                      "currency": "EUR"}},
                {"from": 5, "to": None, "pricePerCall": {"amountMicros": 1_000,
                                                         "currency": "EUR"}}]}]
        # Two calls first, then four at once through both replicas: the meter row numbers
        # them 0–5 whatever the order they commit in.
        sessions = [await qod(a, headers, "t0"), await qod(b, headers, "t1")]
        sessions += await asyncio.gather(*(qod((a, b)[i % 2], headers, f"t{i}")
                                           for i in range(2, 6)))
        assert all(s["__typename"] == "QualityOnDemandSession" for s in sessions), sessions
        assert [s["charge"]["amountMicros"] for s in sessions[:2]] == TIER_PRICES[:2]
        assert sorted(s["charge"]["amountMicros"] for s in sessions) == sorted(TIER_PRICES)
        # A repeat is not a new call: same price, the count stays at six.
        repeat = await qod(b, headers, "t3")
        assert repeat["repeated"] is True and repeat["charge"] == sessions[3]["charge"]

        november = await usage(a, headers, NOVEMBER)
        assert (november["calls"], november["charge"]["amountMicros"]) == (6, 41_000)
        records = await call(a, headers, """query($from: DateTime!, $to: DateTime!) {
          partner { usage(from: $from, to: $to) { records(first: 10) { edges { node {
            callOfMonth statementId charge { amountMicros } } } } } } }""", NOVEMBER)
        nodes = [e["node"] for e in
                 records.json()["data"]["partner"]["usage"]["records"]["edges"]]
        assert sorted(n["callOfMonth"] for n in nodes) == list(range(6))
        assert all(n["charge"]["amountMicros"] == TIER_PRICES[n["callOfMonth"]]
                   and n["statementId"] is None for n in nodes)

        # 23:30 UTC on 30 November is December in Berlin: call 0 of a new month.
        clock.now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
        december = await qod(a, headers, "t6")
        assert december["charge"]["amountMicros"] == TIER_PRICES[0]

    balances, transfers, calls = await ledger(pool, tenant_name)
    assert [c["month_call"] for c in calls][-1] == 0 and len(calls) == 7
    assert sorted(t["amount_micros"] for t in transfers) == sorted(
        [*TIER_PRICES, TIER_PRICES[0]])
    assert balances["receivable:partner:tiers"] == -(41_000 + 10_000)
    assert balances["revenue:networkApi"] == 51_000


STATEMENTS = """
query Statements($id: String, $first: Int!, $after: String) {
  partner(id: $id) {
    statements(first: $first, after: $after) {
      edges { node { id period { kind start end } records payable { amountMicros }
                     networkApiCalls networkApiCharges { amountMicros amount currency }
                     net { amountMicros amount } netDirection
                     settled { currency fxRate net { amount currency } } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""


async def test_partner_sees_its_statements_netting_its_network_api_charges(
        servers: Servers, pool: Pool, tenant_name: str) -> None:
    """Tiered calls in November and December 2026 (Berlin), statements of both months; the
    partner pages through them with its key, an agent names the agreement, another tenant's
    agent finds none."""
    keys = await install(pool, tenant_name, [agreement(tenant_name, "tiers", TIERED_APIS)])
    headers = api_key(keys["tiers"])
    clock = StepClock(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    async with serve_api(servers, clock=clock) as api:
        for i in range(4):  # 10,000 × 3 + 5,000
            assert (await qod(api, headers, f"n{i}"))["__typename"] == "QualityOnDemandSession"
        clock.now = datetime(2026, 12, 10, 10, 0, tzinfo=UTC)
        assert (await qod(api, headers, "d0"))["charge"]["amountMicros"] == 10_000
        for period, now in (("2026-11", datetime(2026, 12, 1, 9, tzinfo=UTC)),
                            ("2026-12", datetime(2027, 1, 1, 9, tzinfo=UTC))):
            made = await run_statements(pool, tenant_name, period, {}, agreements=["tiers"],
                                        now=now)
            assert [r.error for r in made] == [None]

        first = await call(api, headers, STATEMENTS, {"first": 1})
        page = first.json()["data"]["partner"]["statements"]
        assert page["pageInfo"]["hasNextPage"] is True
        december = page["edges"][0]["node"]
        assert december["period"] == {"kind": "monthly", "start": "2026-12-01",
                                      "end": "2027-01-01"}
        assert (december["networkApiCalls"], december["net"]) == (
            1, {"amountMicros": -10_000, "amount": "-0.01"})
        rest = await call(api, headers, STATEMENTS, {
            "first": 5, "after": page["pageInfo"]["endCursor"]})
        november = rest.json()["data"]["partner"]["statements"]["edges"][0]["node"]
        assert november == {
            "id": november["id"],
            "period": {"kind": "monthly", "start": "2026-11-01", "end": "2026-12-01"},
            "records": 0, "payable": {"amountMicros": 0}, "networkApiCalls": 4,
            "networkApiCharges": {"amountMicros": 35_000, "amount": "0.035",
                                  "currency": "EUR"},
            "net": {"amountMicros": -35_000, "amount": "-0.035"},
            "netDirection": "PARTNER_PAYS_OPERATOR",
            "settled": {"currency": "EUR", "fxRate": None,
                        "net": {"amount": "-0.04", "currency": "EUR"}}}
        # Each statement settled the calls of its month.
        records = await call(api, headers, """query($from: DateTime!, $to: DateTime!) {
          partner { usage(from: $from, to: $to) { records(first: 10) { edges { node {
            statementId } } } } } }""", NOVEMBER)
        assert {e["node"]["statementId"] for e in records.json()["data"]["partner"]["usage"][
            "records"]["edges"]} == {november["id"]}

        agent = {"Authorization": f"Bearer {api.token(tenant_name)}"}
        seen = await call(api, agent, STATEMENTS, {"id": "tiers", "first": 5})
        assert [e["node"]["id"] for e in seen.json()["data"]["partner"]["statements"][
            "edges"]] == [december["id"], november["id"]]
        stranger = {"Authorization": f"Bearer {api.token(tenant_name + 'x')}"}
        hidden = await call(api, stranger, STATEMENTS, {"id": "tiers", "first": 5})
        assert hidden.json()["data"] is None
        assert hidden.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"


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


# ------------------------------------------------------------------ GDPR erasure


async def test_erasure_pseudonymises_the_customers_qod_sessions_only(
        servers: Servers, pool: Pool, tenant_name: str) -> None:
    """QoD requests name an MSISDN. Erasing the customer (ADR 0010) pseudonymises those made
    for its line while the line was its own — in `qod_sessions` and in the outbox copy of the
    network request, with the line's pseudonym — and replaces their calls' request digests;
    requests for the same number before the subscription (another holder) or after it ended
    (the number sold again), and for other numbers, are untouched. Charges stay."""
    line, other = "491705550777", "491705550999"
    keys = await install(pool, tenant_name, [agreement(tenant_name, "lab", [
        {"name": "qod", "pricePerCall": "0.01", "rateLimitPerSecond": 100}])])
    headers = api_key(keys["lab"])
    clock = StepClock(datetime.now(UTC) - timedelta(days=1))
    async with serve_api(servers, clock=clock) as api:
        agent = api.token(tenant_name)
        sessions = {"before": await qod(api, headers, "before", msisdn=line)}
        customer_id = await register_and_order(api, agent, msisdn=line)
        clock.now = datetime.now(UTC)  # the line is the customer's now
        sessions["during"] = await qod(api, headers, "during", msisdn=line)
        sessions["plus"] = await qod(api, headers, "plus", msisdn="+" + line)
        sessions["other"] = await qod(api, headers, "other", msisdn=other)
        subscriptions = await api.graphql(
            agent, "query($id: UUID!) { customer(id: $id) { subscriptions { id } } }",
            {"id": customer_id})
        for each in subscriptions["data"]["customer"]["subscriptions"]:
            cancelled = await api.graphql(agent, CANCEL, {"id": each["id"],
                                                          "when": "IMMEDIATE", "key": "c1"})
            assert cancelled["data"]["cancelSubscription"]["__typename"] == \
                "CancelSubscriptionSuccess", cancelled
        clock.now = datetime.now(UTC) + timedelta(hours=1)  # the number, sold again
        sessions["after"] = await qod(api, headers, "after", msisdn=line)
        assert all(s["__typename"] == "QualityOnDemandSession" for s in sessions.values())
        _, transfers_before, calls_before = await ledger(pool, tenant_name)

        erased = await api.graphql(agent, ERASE, {"id": customer_id, "key": "e1"})
        result = erased["data"]["eraseCustomer"]
        assert result["__typename"] == "EraseCustomerSuccess", erased
        pseudonym = result["customer"]["subscriptions"][0]["subscriber"]
        assert pseudonym.startswith("erased-")

    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        stored = {str(r["session_id"]): r["msisdn"] for r in await conn.fetch(
            "SELECT session_id, msisdn FROM qod_sessions")}
        relayed = {str(r["id"]): json.loads(bytes(r["payload"]))["data"]["msisdn"]
                   for r in await conn.fetch(
                       "SELECT id, payload FROM outbox WHERE subject LIKE '%.oss.provision."
                       "request'")}
    by_name = {name: stored[s["sessionId"]] for name, s in sessions.items()}
    assert by_name == {"before": line, "during": pseudonym, "plus": pseudonym,
                       "other": other, "after": line}
    assert {name: relayed[s["sessionId"]] for name, s in sessions.items()} == by_name
    # The call records keep their charges; only the erased calls' request digests changed.
    _, transfers_after, calls_after = await ledger(pool, tenant_name)
    assert transfers_after == transfers_before
    digests = {str(c["call_id"]): c["request_digest"] for c in calls_before}
    changed = {str(c["call_id"]) for c in calls_after
               if c["request_digest"] != digests[str(c["call_id"])]}
    assert changed == {sessions["during"]["callId"], sessions["plus"]["callId"]}
    assert [(c["price_micros"], c["called_at"]) for c in calls_after] == [
        (c["price_micros"], c["called_at"]) for c in calls_before]
