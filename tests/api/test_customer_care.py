"""Customer care over real HTTP: DataLoaders (round trips counted on the real asyncpg
connections), consent history, cancellations and orders, GDPR erasure, partner API keys, and
another tenant's credentials seeing nothing of any of it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
import websockets

from tests.billing.test_bill_run import period_for
from tests.conftest import Servers
from tests.factories import example_resources, install_example_catalog
from tests.running import Api, StartEngine
from tollgate_core import customer_service
from tollgate_core.billing.run import bill_run
from tollgate_core.domain.billing import local_midnight
from tollgate_core.local.apply import apply_resources
from tollgate_core.store.db import Pool

GIB = 1024**3

REGISTER = """
mutation Register($input: RegisterCustomerInput!, $key: String!) {
  registerCustomer(input: $input, idempotencyKey: $key) {
    __typename ... on RegisterCustomerSuccess { customer { id } }
  }
}"""
ORDER = """
mutation Order($input: PlaceOrderInput!, $key: String!) {
  placeOrder(input: $input, idempotencyKey: $key) {
    __typename
    ... on PlaceOrderSuccess { subscriptionId order { id type state items { action offerId
                                                                          subscriptionId } } }
    ... on ConflictError { message field }
    ... on NotFoundError { message field }
    ... on ForbiddenError { message }
  }
}"""
CONSENT = """
mutation Consent($id: UUID!, $m: Boolean, $d: Boolean, $channel: ConsentChannel!,
                 $key: String!) {
  updateConsent(customerId: $id, marketing: $m, dataProcessing: $d, channel: $channel,
                idempotencyKey: $key) {
    __typename
    ... on UpdateConsentSuccess { consent { marketing dataProcessing updatedAt } }
    ... on ValidationError { field }
    ... on ConflictError { field message }
    ... on NotFoundError { field }
    ... on ForbiddenError { message }
  }
}"""
CANCEL = """
mutation Cancel($id: UUID!, $when: CancellationEffective!, $key: String!) {
  cancelSubscription(subscriptionId: $id, effective: $when, idempotencyKey: $key) {
    __typename
    ... on CancelSubscriptionSuccess {
      endsAt
      order { id type state dueAt items { action offerId subscriptionId } }
      customer { subscriptions { id offerId status endsAt } }
    }
    ... on ConflictError { message field }
    ... on NotFoundError { field }
    ... on ForbiddenError { message }
  }
}"""
ERASE = """
mutation Erase($id: UUID!, $key: String!) {
  eraseCustomer(customerId: $id, idempotencyKey: $key) {
    __typename
    ... on EraseCustomerSuccess { erasedAt customer { name email erasedAt
                                                      subscriptions { subscriber } } }
    ... on ConflictError { message field }
    ... on NotFoundError { field }
    ... on ForbiddenError { message }
  }
}"""
PROFILE = """
query Profile($id: UUID!) {
  customer(id: $id) {
    name email erasedAt
    subscriptions { id subscriber status }
    consent { marketing dataProcessing }
    consentHistory(first: 10) { edges { node { purpose granted channel recordedBy } } }
    orders(first: 10) { edges { node { id type state } } }
  }
}"""


async def register(api: Api, token: str, name: str, key: str) -> str:
    body = await api.graphql(token, REGISTER, {
        "input": {"name": name, "email": f"{key}@example.de"}, "key": key})
    customer_id: str = body["data"]["registerCustomer"]["customer"]["id"]
    return customer_id


async def order(api: Api, token: str, customer_id: str, offer: str, msisdn: str,
                key: str) -> dict[str, Any]:
    body = await api.graphql(token, ORDER, {"input": {
        "customerId": customer_id, "offerId": offer, "subscriber": msisdn}, "key": key})
    result: dict[str, Any] = body["data"]["placeOrder"]
    return result


async def post(api: Api, query: str, headers: dict[str, str],
               variables: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(api.url, json={"query": query, "variables": variables},
                                 headers=headers)


# ------------------------------------------------------------------ round trips


@pytest.fixture
def measured(statements: list[str]) -> Any:
    async def count(request: Any) -> tuple[int, dict[str, Any]]:
        statements.clear()
        body = await request
        return len(statements), body

    return count


async def seed_usage(servers: Servers, tenant: str, customer_id: str, subscription_id: str,
                     records: int) -> None:
    """Rated records and an allowance period, as the charging engine would leave them."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        await conn.executemany(
            "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id,"
            " service, quantity, allowance_units, chargeable_units, amount_micros, currency,"
            " price_name, catalog_revision, start_time) VALUES ($1, $2, $3, $4, 'data',"
            " 1048576, 0, 1048576, 10000, 'EUR', 'data-usage', 1, $5)",
            [(tenant, uuid.uuid4(), uuid.UUID(subscription_id), uuid.UUID(customer_id),
              start + timedelta(minutes=i)) for i in range(records)])
        await conn.execute(
            "INSERT INTO allowance_usage (tenant_id, subscription_id, allowance, period_start,"
            " quantity, used) VALUES ($1, $2, 'data-5gb', $3, $4, $5)",
            tenant, uuid.UUID(subscription_id), date(2026, 1, 1), 5 * GIB, GIB)
    finally:
        await conn.close()


async def seed_invoices(servers: Servers, pool: Pool, tenant: str, periods: int) -> None:
    """The tenant's subscriptions backdated to the start of the `periods`-th last closed
    bill period, and each of those periods billed by real bill runs."""
    first = await period_for(pool, tenant)
    for _ in range(periods - 1):
        first = first.previous()
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        await conn.execute("UPDATE subscriptions SET started_at = $2 WHERE tenant_id = $1",
                           tenant, local_midnight(first.start, "Europe/Berlin"))
    finally:
        await conn.close()
    period = first
    for _ in range(periods):
        assert (await bill_run(pool, tenant, period)).documents > 0
        period = period.next()


DASHBOARD = """
query Dashboard($n: Int!) {
  me {
    id name email
    subscriptions { id offerId status endsAt }
    balance { balance { amountMicros currency } overage { amountMicros } }
    allowances { name used remaining }
    consent { marketing }
    usage(first: $n) { edges { node { eventId quantity charge { amountMicros }
                                     catalogRevision } }
                       pageInfo { hasNextPage endCursor } }
    invoices(first: 3) { edges { node { billNo billingPeriod { start } state
                                        amountDue { amountMicros } remainingAmount { amount }
                                        lines { type net { amountMicros } catalogRevision }
                                        taxItems { taxRate taxAmount { amountMicros } } } }
                         pageInfo { hasNextPage } }
  }
}"""
CUSTOMER_LIST = """
query Customers($customers: Int!) {
  customers(first: $customers) {
    edges { node {
      id name
      subscriptions { id offerId }
      balance { balance { amountMicros } }
      allowances { name used }
      consent { marketing }
      usage(first: 20) { edges { node { eventId charge { amountMicros } } } }
      orders(first: 5) { edges { node { type state } } }
      invoices(first: 3) { edges { node { billNo state amountDue { amountMicros }
                                          lines { type name } taxItems { taxRate } html } } }
    } }
    pageInfo { hasNextPage }
  }
}"""


async def test_the_dashboard_costs_the_same_round_trips_for_any_page_and_customer_count(
        api: Api, pool: Pool, servers: Servers, tenant_name: str, measured: Any) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customers = []
    for i in range(10):
        customer_id = await register(api, agent, f"Kunde {i}", f"reg-{i}")
        placed = await order(api, agent, customer_id, "mobile-m", f"4917000000{i:02d}",
                             f"order-{i}")
        await seed_usage(servers, tenant_name, customer_id, placed["subscriptionId"], 25)
        customers.append(customer_id)
    await seed_invoices(servers, pool, tenant_name, 4)

    me = api.token(tenant_name, subject=customers[0], roles=("customer",))
    counts = {}
    for n in (1, 5, 20):
        counts[n], body = await measured(api.graphql(me, DASHBOARD, {"n": n}))
        usage = body["data"]["me"]["usage"]
        assert len(usage["edges"]) == n and usage["pageInfo"]["hasNextPage"], body
        assert body["data"]["me"]["allowances"] == [{"name": "data-5gb", "used": GIB,
                                                     "remaining": 4 * GIB}]
        invoices = body["data"]["me"]["invoices"]
        assert invoices["pageInfo"]["hasNextPage"] is True  # 4 billed periods, 3 shown
        starts = [e["node"]["billingPeriod"]["start"] for e in invoices["edges"]]
        assert len(starts) == 3 and starts == sorted(starts, reverse=True), invoices
        assert all(e["node"]["lines"] and e["node"]["taxItems"] for e in invoices["edges"])
    assert counts[1] == counts[5] == counts[20], counts

    listed = {}
    for size in (1, 10):
        listed[size], body = await measured(api.graphql(agent, CUSTOMER_LIST,
                                                        {"customers": size}))
        nodes = [e["node"] for e in body["data"]["customers"]["edges"]]
        assert len(nodes) == size, body
        assert all(len(n["usage"]["edges"]) == 20 for n in nodes)
        assert all(len(n["subscriptions"]) == 1 and n["allowances"] for n in nodes)
        assert all(n["orders"]["edges"] == [{"node": {"type": "ADD", "state": "COMPLETED"}}]
                   for n in nodes)
        assert all(len(n["invoices"]["edges"]) == 3 for n in nodes)
        assert all(e["node"]["billNo"] in e["node"]["html"] and e["node"]["lines"]
                   for n in nodes for e in n["invoices"]["edges"])
    assert listed[1] == listed[10], listed
    print(f"statements: dashboard {counts}, customer list {listed}")
    # One statement per kind of field, all in one read-only transaction of the request: two
    # statements more (BEGIN with the tenant; COMMIT with the session reset, so releasing
    # the connection costs no round trip of its own). The dashboard's 8 kinds: customer,
    # subscriptions, balance, allowances, consent, usage, invoices, invoice lines. The
    # list: its page in a transaction of its own, then 7 kinds, the invoices' lines and the
    # tenant's spec (for the HTML).
    assert counts[20] == 8 + 2, counts
    assert listed[10] == 3 + (7 + 1 + 1) + 2, listed


# ------------------------------------------------------------------ consent


async def test_consent_decisions_are_kept_as_history_with_time_and_channel(
        api: Api, pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register(api, agent, "Erika", "erika")
    other_id = await register(api, agent, "Max", "max")
    me = api.token(tenant_name, subject=customer_id, roles=("customer",))

    first = {"id": customer_id, "m": True, "d": True, "channel": "APP", "key": "c1"}
    granted = (await api.graphql(me, CONSENT, first))["data"]["updateConsent"]
    assert granted["__typename"] == "UpdateConsentSuccess"
    assert granted["consent"]["marketing"] is True
    assert granted["consent"]["dataProcessing"] is True

    # The agent records the customer's withdrawal of marketing consent by phone.
    withdrawn = (await api.graphql(agent, CONSENT, {
        "id": customer_id, "m": False, "channel": "AGENT", "key": "c2"}))["data"]
    assert withdrawn["updateConsent"]["consent"]["marketing"] is False
    assert withdrawn["updateConsent"]["consent"]["dataProcessing"] is True

    # A repeat returns the first answer and records nothing; other input under the key: conflict.
    repeat = (await api.graphql(me, CONSENT, first))["data"]["updateConsent"]
    assert repeat["__typename"] == "UpdateConsentSuccess"
    clash = (await api.graphql(me, CONSENT, {**first, "m": False}))["data"]["updateConsent"]
    assert clash == {"__typename": "ConflictError", "field": "idempotencyKey",
                     "message": "idempotencyKey was already used with a different input"}
    empty = (await api.graphql(me, CONSENT, {"id": customer_id, "channel": "WEB",
                                             "key": "c3"}))["data"]["updateConsent"]
    assert empty == {"__typename": "ValidationError", "field": "marketing"}
    foreign = (await api.graphql(me, CONSENT, {"id": other_id, "m": True, "channel": "WEB",
                                               "key": "c4"}))["data"]["updateConsent"]
    assert foreign["__typename"] == "ForbiddenError"

    profile = (await api.graphql(me, PROFILE, {"id": customer_id}))["data"]["customer"]
    assert profile["consent"] == {"marketing": False, "dataProcessing": True}
    history = [e["node"] for e in profile["consentHistory"]["edges"]]
    assert history[0] == {"purpose": "MARKETING", "granted": False, "channel": "AGENT",
                          "recordedBy": "agent-1"}
    assert sorted((h["purpose"], h["granted"], h["channel"], h["recordedBy"])
                  for h in history[1:]) == [("DATA_PROCESSING", True, "APP", customer_id),
                                            ("MARKETING", True, "APP", customer_id)]
    other = (await api.graphql(agent, PROFILE, {"id": other_id}))["data"]["customer"]
    assert other["consent"] == {"marketing": None, "dataProcessing": None}
    assert other["consentHistory"]["edges"] == []


# ------------------------------------------------------------------ cancel and orders


def next_cycle_start(now: datetime) -> datetime:
    """The example tenant bills from the 1st, Europe/Berlin."""
    local = now.astimezone(ZoneInfo("Europe/Berlin"))
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=ZoneInfo("Europe/Berlin"))


async def test_cancelling_at_period_end_then_now_is_recorded_as_orders(
        api: Api, pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register(api, agent, "Erika", "erika")
    other_id = await register(api, agent, "Max", "max")
    me = api.token(tenant_name, subject=customer_id, roles=("customer",))
    plan = await order(api, me, customer_id, "mobile-m", "491700000001", "o1")
    assert plan["order"]["type"] == "ADD" and plan["order"]["state"] == "COMPLETED"
    assert plan["order"]["items"] == [{"action": "ADD", "offerId": "mobile-m",
                                       "subscriptionId": plan["subscriptionId"]}]
    boost = await order(api, me, customer_id, "data-boost", "491700000001", "o2")
    theirs = await order(api, agent, other_id, "mobile-m", "491700000002", "o3")

    # Another customer's subscription is not found (not merely forbidden).
    stranger = await api.graphql(me, CANCEL, {"id": theirs["subscriptionId"],
                                              "when": "IMMEDIATE", "key": "x1"})
    assert stranger["data"]["cancelSubscription"] == {"__typename": "NotFoundError",
                                                      "field": "subscriptionId"}

    before = datetime.now(UTC)
    later = (await api.graphql(me, CANCEL, {"id": plan["subscriptionId"],
                                            "when": "END_OF_PERIOD", "key": "k1"}))
    later_result = later["data"]["cancelSubscription"]
    assert later_result["__typename"] == "CancelSubscriptionSuccess", later
    ends = datetime.fromisoformat(later_result["endsAt"])
    assert ends == next_cycle_start(before)
    pending = later_result["order"]
    assert (pending["type"], pending["state"]) == ("CANCEL", "PENDING")
    assert datetime.fromisoformat(pending["dueAt"]) == ends
    assert {i["subscriptionId"] for i in pending["items"]} == {
        plan["subscriptionId"], boost["subscriptionId"]}  # the add-on goes with its plan
    subscriptions = later_result["customer"]["subscriptions"]
    assert {(s["status"], s["endsAt"] is not None) for s in subscriptions} == {("active", True)}

    again = await api.graphql(me, CANCEL, {"id": plan["subscriptionId"],
                                           "when": "END_OF_PERIOD", "key": "k2"})
    assert again["data"]["cancelSubscription"]["__typename"] == "ConflictError"

    now = (await api.graphql(agent, CANCEL, {"id": plan["subscriptionId"],
                                             "when": "IMMEDIATE", "key": "k3"}))
    now_result = now["data"]["cancelSubscription"]
    assert (now_result["order"]["type"], now_result["order"]["state"]) == ("CANCEL",
                                                                          "COMPLETED")
    assert {s["status"] for s in now_result["customer"]["subscriptions"]} == {"cancelled"}
    gone = await api.graphql(me, CANCEL, {"id": boost["subscriptionId"], "when": "IMMEDIATE",
                                          "key": "k4"})
    assert gone["data"]["cancelSubscription"]["__typename"] == "ConflictError"
    # A repeat of the immediate cancellation answers the same order.
    repeat = await api.graphql(agent, CANCEL, {"id": plan["subscriptionId"],
                                               "when": "IMMEDIATE", "key": "k3"})
    assert repeat["data"]["cancelSubscription"]["order"]["id"] == now_result["order"]["id"]

    orders_query = "query { orders(first: 10) { edges { node { id type state customerId } } } }"
    mine = [e["node"] for e in (await api.graphql(me, orders_query))["data"]["orders"]["edges"]]
    assert [(o["type"], o["state"]) for o in mine] == [
        ("CANCEL", "COMPLETED"), ("CANCEL", "CANCELLED"), ("ADD", "COMPLETED"),
        ("ADD", "COMPLETED")]  # newest first; the pending one was overtaken
    assert {o["customerId"] for o in mine} == {customer_id}
    everyone = (await api.graphql(agent, orders_query))["data"]["orders"]["edges"]
    assert len(everyone) == 5
    paged = await api.graphql(me, "query($after: String) { orders(first: 3, after: $after) {"
                              " edges { node { id } } pageInfo { hasNextPage endCursor } } }")
    page = paged["data"]["orders"]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = await api.graphql(me, "query($after: String) { orders(first: 3, after: $after) {"
                             " edges { node { id } } pageInfo { hasNextPage } } }",
                             {"after": page["pageInfo"]["endCursor"]})
    assert [e["node"]["id"] for e in page["edges"] + rest["data"]["orders"]["edges"]] == [
        o["id"] for o in mine]


async def test_an_end_of_period_cancellation_is_carried_out_once_due(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register(api, agent, "Erika", "erika")
    plan = await order(api, agent, customer_id, "mobile-m", "491700000001", "o1")
    later = await api.graphql(agent, CANCEL, {"id": plan["subscriptionId"],
                                              "when": "END_OF_PERIOD", "key": "k1"})
    order_id = later["data"]["cancelSubscription"]["order"]["id"]
    assert await customer_service.complete_due_cancellations(pool, tenant_name) == 0

    conn = await asyncpg.connect(servers.owner_dsn)
    try:  # the period ends
        await conn.execute("UPDATE subscriptions SET ended_at = now() - interval '1 second'"
                           " WHERE tenant_id = $1", tenant_name)
        await conn.execute("UPDATE orders SET due_at = now() - interval '1 second'"
                           " WHERE tenant_id = $1 AND state = 'pending'", tenant_name)
    finally:
        await conn.close()
    assert await customer_service.complete_due_cancellations(pool, tenant_name) == 1
    assert await customer_service.complete_due_cancellations(pool, tenant_name) == 0
    profile = (await api.graphql(agent, PROFILE, {"id": customer_id}))["data"]["customer"]
    assert [s["status"] for s in profile["subscriptions"]] == ["cancelled"]
    assert profile["orders"]["edges"][0]["node"] == {"id": order_id, "type": "CANCEL",
                                                     "state": "COMPLETED"}


# ------------------------------------------------------------------ erasure


async def test_erasure_pseudonymises_personal_data_and_keeps_financial_records(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register(api, agent, "Erika Mustermann", "erika")
    me = api.token(tenant_name, subject=customer_id, roles=("customer",))
    placed = await order(api, agent, customer_id, "mobile-m", "491709999999", "o1")
    await seed_usage(servers, tenant_name, customer_id, placed["subscriptionId"], 3)
    top_up = ("mutation($id: UUID!) { topUp(input: {customerId: $id, amount: \"7.50\"},"
              " idempotencyKey: \"t1\") { __typename } }")
    topped = await api.graphql(agent, top_up, {"id": customer_id})
    assert topped["data"]["topUp"]["__typename"] == "TopUpSuccess"
    await api.graphql(me, CONSENT, {"id": customer_id, "m": True, "channel": "WEB",
                                    "key": "c1"})

    async def financial() -> tuple[Any, ...]:
        conn = await asyncpg.connect(servers.owner_dsn)
        try:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM transfers WHERE tenant_id = $1),"
                " (SELECT sum(balance_micros) FROM ledger_accounts WHERE tenant_id = $1"
                "  AND account_id = 'customer:' || $2),"
                " (SELECT count(*) FROM rated_usage WHERE tenant_id = $1"
                "  AND customer_id = $2::uuid),"
                " (SELECT sum(amount_micros) FROM rated_usage WHERE tenant_id = $1),"
                " (SELECT count(*) FROM orders WHERE tenant_id = $1),"
                " (SELECT count(*) FROM consent_records WHERE tenant_id = $1)",
                tenant_name, customer_id)
        finally:
            await conn.close()
        assert row is not None
        return tuple(row)

    kept = await financial()
    assert kept[0] == 1 and kept[1] == 7_500_000 and kept[2] == 3

    by_customer = await api.graphql(me, ERASE, {"id": customer_id, "key": "e0"})
    assert by_customer["data"]["eraseCustomer"]["__typename"] == "ForbiddenError"
    active = await api.graphql(agent, ERASE, {"id": customer_id, "key": "e1"})
    assert active["data"]["eraseCustomer"]["__typename"] == "ConflictError"
    await api.graphql(agent, CANCEL, {"id": placed["subscriptionId"], "when": "IMMEDIATE",
                                      "key": "k1"})
    kept = await financial()

    erased = (await api.graphql(agent, ERASE, {"id": customer_id, "key": "e2"}))["data"]
    result = erased["eraseCustomer"]
    assert result["__typename"] == "EraseCustomerSuccess", erased
    shown = result["customer"]
    assert shown["name"].startswith("erased-") and shown["name"] != "Erika Mustermann"
    assert shown["email"].endswith("@erased.invalid") and "erika" not in shown["email"]
    assert shown["subscriptions"][0]["subscriber"].startswith("erased-")
    assert shown["erasedAt"] == result["erasedAt"]

    # Further reads (the customer's own too) return the pseudonyms; money is untouched.
    profile = (await api.graphql(me, PROFILE, {"id": customer_id}))["data"]["customer"]
    assert (profile["name"], profile["email"]) == (shown["name"], shown["email"])
    assert await financial() == kept
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        leftovers = await conn.fetchval(
            "SELECT count(*) FROM customers c JOIN subscriptions s USING (tenant_id,"
            " customer_id) WHERE c.tenant_id = $1 AND (c.name LIKE '%Erika%' OR c.email LIKE"
            " '%erika%' OR s.subscriber = '491709999999')", tenant_name)
        recorded = await conn.fetchrow("SELECT requested_by, erased_at FROM erasures"
                                       " WHERE tenant_id = $1 AND customer_id = $2",
                                       tenant_name, uuid.UUID(customer_id))
        event = await conn.fetchval("SELECT payload FROM outbox WHERE tenant_id = $1 AND"
                                    " subject LIKE '%.evt.customer.erased'", tenant_name)
    finally:
        await conn.close()
    assert leftovers == 0
    assert recorded is not None and recorded["requested_by"] == "agent-1"
    assert json.loads(event)["data"]["customerId"] == customer_id
    assert "Erika" not in event.decode()

    # Erasing again changes nothing; an erased customer takes no new orders or consents;
    # the freed line can belong to someone new.
    twice = (await api.graphql(agent, ERASE, {"id": customer_id, "key": "e3"}))["data"]
    assert twice["eraseCustomer"]["erasedAt"] == result["erasedAt"]
    assert twice["eraseCustomer"]["customer"]["name"] == shown["name"]
    reorder = await order(api, agent, customer_id, "mobile-m", "491709999999", "o2")
    assert reorder["__typename"] == "ConflictError"
    consent = await api.graphql(agent, CONSENT, {"id": customer_id, "m": True,
                                                 "channel": "WEB", "key": "c2"})
    assert consent["data"]["updateConsent"]["__typename"] == "ConflictError"
    newcomer = await register(api, agent, "Neu", "neu")
    taken = await order(api, agent, newcomer, "mobile-m", "491709999999", "o3")
    assert taken["__typename"] == "PlaceOrderSuccess"


# ------------------------------------------------------------------ partners


PARTNER = """
query { partner { id partnerId displayName role offers catalogRevision
  revenueShare { model percent payer perUnitFee { amount } }
  settlement { period }
  networkApis { name pricePerCall { amountMicros amount currency } rateLimitPerSecond } } }"""


async def install_with_keys(pool: Pool, tenant: str) -> str:
    report = await apply_resources(pool, example_resources(tenant))
    assert not report.errors, report.errors
    key: str = report.partner_keys[tenant]["streamflix"]
    return key


async def test_a_partner_key_reads_its_agreement_and_no_customer(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    key = await install_with_keys(pool, tenant_name)
    # Re-applying keeps the key (no new one is issued).
    again = await apply_resources(pool, example_resources(tenant_name))
    assert again.partner_keys == {}
    customer_id = await register(api, api.token(tenant_name), "Erika", "erika")
    partner = {"Authorization": f"ApiKey {key}"}

    response = await post(api, PARTNER, partner)
    assert response.status_code == 200
    agreement = response.json()["data"]["partner"]
    assert agreement == {
        "id": "streamflix", "partnerId": "streamflix", "displayName": "StreamFlix GmbH",
        "role": "contentProvider", "offers": ["data-boost"], "catalogRevision": 1,
        "revenueShare": {"model": "percentage", "percent": "30", "payer": "operator",
                         "perUnitFee": None},
        "settlement": {"period": "monthly"},
        "networkApis": [{"name": "qod", "rateLimitPerSecond": 50, "pricePerCall": {
            "amountMicros": 2000, "amount": "0.002", "currency": "EUR"}}]}

    for query in (f'{{ customer(id: "{customer_id}") {{ name }} }}',
                  "{ customers { edges { node { name } } } }",
                  "{ orders { edges { node { id } } } }", "{ me { name } }"):
        body = (await post(api, query, partner)).json()
        assert body["data"] is None, body
        assert body["errors"][0]["extensions"]["code"] in {"FORBIDDEN", "NOT_FOUND"}, body
    consent = (await post(api, CONSENT, partner, {"id": customer_id, "m": True,
                                                  "channel": "API", "key": "p1"})).json()
    assert consent["data"]["updateConsent"]["__typename"] == "ForbiddenError"
    erase = (await post(api, ERASE, partner, {"id": customer_id, "key": "p2"})).json()
    assert erase["data"]["eraseCustomer"]["__typename"] == "ForbiddenError"

    # An unknown key is refused before execution, like a bad token (ADR 0015).
    forged = await post(api, PARTNER, {"Authorization": f"ApiKey {key}x"})
    assert forged.status_code == 401
    assert "ApiKey" in forged.headers["www-authenticate"]
    assert forged.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    customer_token = api.token(tenant_name, subject=customer_id, roles=("customer",))
    refused = await api.graphql(customer_token, PARTNER)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    by_agent = await api.graphql(api.token(tenant_name),
                                 '{ partner(id: "streamflix") { displayName } }')
    assert by_agent["data"]["partner"]["displayName"] == "StreamFlix GmbH"

    # PostgreSQL holds the key's SHA-256 only.
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        stored = await conn.fetch("SELECT * FROM partner_api_keys WHERE tenant_id = $1",
                                  tenant_name)
    finally:
        await conn.close()
    assert [r["key_digest"] for r in stored] == [hashlib.sha256(key.encode()).hexdigest()]
    assert all(key not in str(value) for r in stored for value in r.values())


# ------------------------------------------------------------------ live order updates


async def test_an_order_reaches_the_customers_order_subscription(
        api: Api, pool: Pool, charging: StartEngine, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)
    customer_id = await register(api, agent, "Erika", "erika")
    await charging(tenant_name)  # its outbox relay publishes the events
    me = api.token(tenant_name, subject=customer_id, roles=("customer",))
    ws = await websockets.connect(api.url.replace("http://", "ws://"),
                                  subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    try:
        await ws.send(json.dumps({"type": "connection_init",
                                  "payload": {"Authorization": f"Bearer {me}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: UUID!) { orderUpdated(customerId: $id) {"
                     " id type state items { offerId } } }",
            "variables": {"id": customer_id}}}))
        await asyncio.sleep(0.2)  # the subscription is registered before the order
        placed = await order(api, me, customer_id, "mobile-m", "491700000001", "o1")
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert message["type"] == "next", message
        assert message["payload"]["data"]["orderUpdated"] == {
            "id": placed["order"]["id"], "type": "ADD", "state": "COMPLETED",
            "items": [{"offerId": "mobile-m"}]}
    finally:
        await ws.close()


# ------------------------------------------------------------------ tenant isolation


async def test_another_tenants_credentials_see_and_change_nothing(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Invariant 7 for every customer-care query and mutation: tenant B's agent, admin,
    customer and partner key, given tenant A's ids, get NOT_FOUND/FORBIDDEN and change
    nothing of A's."""
    other = tenant_name + "b"
    await install_with_keys(pool, tenant_name)
    their_key = await install_with_keys(pool, other)
    agent_a = api.token(tenant_name)
    customer_a = await register(api, agent_a, "Erika", "erika")
    placed = await order(api, agent_a, customer_a, "mobile-m", "491700000001", "o1")
    await api.graphql(agent_a, CONSENT, {"id": customer_a, "m": True, "channel": "WEB",
                                         "key": "c1"})
    before = (await api.graphql(agent_a, PROFILE, {"id": customer_a}))["data"]["customer"]
    customer_b = await register(api, api.token(other), "Max", "max")

    b_agent = api.token(other)
    b_admin = api.token(other, subject="admin", roles=("admin",))
    # B's own customer with A's customer's id as subject: still B's tenant.
    b_customer = api.token(other, subject=customer_a, roles=("customer",))
    for token in (b_agent, b_admin, b_customer):
        seen = await api.graphql(token, PROFILE, {"id": customer_a})
        assert seen["data"] is None
        assert seen["errors"][0]["extensions"]["code"] == "NOT_FOUND", seen
        orders = await api.graphql(token, "{ orders { edges { node { id customerId } } } }")
        assert all(e["node"]["customerId"] != customer_a
                   for e in orders["data"]["orders"]["edges"])
        consent = await api.graphql(token, CONSENT, {"id": customer_a, "m": False,
                                                     "channel": "WEB", "key": "x1"})
        assert consent["data"]["updateConsent"]["__typename"] == "NotFoundError"
        cancel = await api.graphql(token, CANCEL, {"id": placed["subscriptionId"],
                                                   "when": "IMMEDIATE", "key": "x2"})
        assert cancel["data"]["cancelSubscription"]["__typename"] == "NotFoundError"
        reorder = await order(api, token, customer_a, "data-boost", "491700000001", "x3")
        assert reorder["__typename"] == "NotFoundError"
    me = await api.graphql(b_customer, "{ me { name } }")
    assert me["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    listed = await api.graphql(b_agent, "{ customers(first: 100) { edges { node { id } } } }")
    assert [e["node"]["id"] for e in listed["data"]["customers"]["edges"]] == [customer_b]
    erase = await api.graphql(b_admin, ERASE, {"id": customer_a, "key": "x4"})
    assert erase["data"]["eraseCustomer"]["__typename"] == "NotFoundError"

    # B's partner key is B's: A's customer is invisible to it, and its agreement is B's.
    key_b = {"Authorization": f"ApiKey {their_key}"}
    for query in (f'{{ customer(id: "{customer_a}") {{ name }} }}',
                  "{ customers { edges { node { id } } } }"):
        body = (await post(api, query, key_b)).json()
        assert body["data"] is None and body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        await conn.execute("UPDATE catalog_revisions SET body = jsonb_set(body,"
                           " '{partners,streamflix,partner,displayName}', '\"Tenant A Only\"')"
                           " WHERE tenant_id = $1", tenant_name)
    finally:
        await conn.close()
    partner_b = (await post(api, "{ partner { displayName } }", key_b)).json()
    assert partner_b["data"]["partner"]["displayName"] == "StreamFlix GmbH"

    after = (await api.graphql(agent_a, PROFILE, {"id": customer_a}))["data"]["customer"]
    assert after == before
    assert after["subscriptions"][0]["status"] == "active"
    assert after["consent"]["marketing"] is True
