"""Invoices over the GraphQL API with real HTTP and websocket clients: documents of real bill
runs (newest first, TMF678 names, exact amounts, HTML), who may see which, payments recorded
by an agent settling them, and `invoiceIssued` fed by the outbox relayed to NATS."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx
import websockets
from nats.js import JetStreamContext

from tests.billing.test_bill_run import TZ, customers, period_for
from tests.factories import install_example_catalog
from tests.running import Api, eventually
from tollgate_core.billing.run import bill_run
from tollgate_core.domain.billing import BillPeriod, local_midnight
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_core.store.outbox import relay_once

INVOICE_FIELDS = """
  id billNo kind customerId billDate billingPeriod { start end } paymentDueDate state
  amountDue { amountMicros amount currency }
  taxExcludedAmount { amountMicros } taxIncludedAmount { amountMicros }
  remainingAmount { amountMicros }
  taxItems { taxCategory taxRate taxAmount { amountMicros } taxableAmount { amountMicros } }
  lines { type name quantity periodCoverage { start end } catalogRevision offerId
          net { amountMicros } tax { amountMicros } taxRate taxInclusive }
"""
MY_INVOICES = """
query Mine($first: Int!, $after: String) {
  me { invoices(first: $first, after: $after) {
    edges { cursor node { ...InvoiceFields } }
    pageInfo { hasNextPage endCursor }
  } }
}
fragment InvoiceFields on Invoice {""" + INVOICE_FIELDS + "}"
ONE_INVOICE = "query One($id: UUID!) { invoice(id: $id) { id billNo state html } }"
PAY = """
mutation Pay($customer: UUID!, $amount: String!, $ref: String!, $key: String!) {
  recordPayment(customerId: $customer, amount: $amount, paymentReference: $ref,
                idempotencyKey: $key) {
    __typename
    ... on RecordPaymentSuccess {
      paymentReference amount { amountMicros currency } unapplied { amountMicros }
      allocations { amount { amountMicros } invoice { id state remainingAmount { amountMicros } } }
      customer { balance { balance { amountMicros } } }
    }
    ... on ValidationError { field message }
    ... on NotFoundError { field }
    ... on ConflictError { field message }
    ... on ForbiddenError { message }
  }
}"""
FEE = 19_990_000
FEE_TAX = 3_190_000  # 19.99 × 19/119 = 3.1916… → 3.19 (prices include 19 % VAT)


async def bill_two_periods(pool: Pool, tenant: str, count: int
                           ) -> tuple[list[str], BillPeriod]:
    """`count` postpaid customers on mobile-m since the start of the period before the last
    closed one; both periods billed. (The last closed period is returned.)"""
    await install_example_catalog(pool, tenant)
    period = await period_for(pool, tenant)
    accounts = await customers(pool, tenant, count, local_midnight(period.previous().start, TZ))
    for billed in (period.previous(), period):
        await bill_run(pool, tenant, billed)
    return [str(c) for c, _ in accounts], period


def customer_token(api: Api, tenant: str, customer_id: str) -> str:
    return api.token(tenant, subject=customer_id, roles=("customer",))


async def test_a_customer_pages_through_their_invoices_newest_first(
        api: Api, pool: Pool, tenant_name: str) -> None:
    (mine, theirs), period = await bill_two_periods(pool, tenant_name, 2)
    me = customer_token(api, tenant_name, mine)

    first = await api.graphql(me, MY_INVOICES, {"first": 1})
    page = first["data"]["me"]["invoices"]
    assert page["pageInfo"]["hasNextPage"] is True, first
    newest = page["edges"][0]["node"]
    second = await api.graphql(me, MY_INVOICES, {"first": 1,
                                                 "after": page["pageInfo"]["endCursor"]})
    rest = second["data"]["me"]["invoices"]
    assert rest["pageInfo"]["hasNextPage"] is False
    older = rest["edges"][0]["node"]

    following = period.next()
    assert newest["billingPeriod"] == {"start": period.start.isoformat(),
                                       "end": period.end.isoformat()}
    assert older["billingPeriod"]["start"] == period.previous().start.isoformat()
    assert newest["customerId"] == older["customerId"] == mine
    assert (newest["kind"], newest["state"]) == ("INVOICE", "ISSUED")
    assert newest["billDate"] == period.end.isoformat()
    assert newest["paymentDueDate"] == (period.end + timedelta(days=14)).isoformat()
    assert newest["billNo"].startswith(f"DE-{period.start:%Y}-") and newest["billNo"] != \
        older["billNo"]
    # Paid in advance: the older invoice covered its own period and the last one; the newest
    # covers only the period after it (nothing new for a coverage already charged).
    assert [(ln["type"], ln["periodCoverage"]) for ln in older["lines"]] == [
        ("RECURRING", {"start": p.start.isoformat(), "end": p.end.isoformat()})
        for p in (period.previous(), period)]
    assert [(ln["type"], ln["periodCoverage"], ln["catalogRevision"], ln["offerId"],
             ln["quantity"], ln["net"]["amountMicros"], ln["tax"]["amountMicros"],
             ln["taxRate"], ln["taxInclusive"]) for ln in newest["lines"]] == [
        ("RECURRING", {"start": following.start.isoformat(),
                       "end": following.end.isoformat()},
         1, "mobile-m", following.days, FEE - FEE_TAX, FEE_TAX, "19", True)]
    assert newest["amountDue"] == {"amountMicros": FEE, "amount": "19.99", "currency": "EUR"}
    assert newest["taxIncludedAmount"]["amountMicros"] == FEE
    assert newest["taxExcludedAmount"]["amountMicros"] == FEE - FEE_TAX
    assert newest["remainingAmount"]["amountMicros"] == FEE
    assert older["amountDue"]["amountMicros"] == 2 * FEE
    assert older["taxItems"] == [{"taxCategory": "standard", "taxRate": "19",
                                  "taxAmount": {"amountMicros": 2 * FEE_TAX},
                                  "taxableAmount": {"amountMicros": 2 * (FEE - FEE_TAX)}}]

    # One document by id, rendered for the tenant's locale (de-DE).
    one = await api.graphql(me, ONE_INVOICE, {"id": newest["id"]})
    document = one["data"]["invoice"]
    assert (document["billNo"], document["state"]) == (newest["billNo"], "ISSUED")
    assert newest["billNo"] in document["html"] and "19,99\xa0€" in document["html"]

    # Someone else's invoice is not found for a customer; an agent sees it; a partner none.
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        their_invoice = str(await conn.fetchval(
            "SELECT invoice_id FROM invoices WHERE customer_id = $1 LIMIT 1", uuid.UUID(theirs)))
    refused = await api.graphql(me, ONE_INVOICE, {"id": their_invoice})
    assert refused["data"] is None
    assert refused["errors"][0]["extensions"] == {"code": "NOT_FOUND", "field": "id"}
    forbidden = await api.graphql(
        me, "query($id: UUID!) { customer(id: $id) { invoices { edges { node { id } } } } }",
        {"id": theirs})
    assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    agent = await api.graphql(api.token(tenant_name), ONE_INVOICE, {"id": their_invoice})
    assert agent["data"]["invoice"]["id"] == their_invoice
    partner = await api.graphql(api.token(tenant_name, subject="partner:streamflix",
                                          roles=("partner",)), ONE_INVOICE, {"id": their_invoice})
    assert partner["data"] is None
    assert partner["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    missing = await api.graphql(api.token(tenant_name), ONE_INVOICE, {"id": str(uuid.uuid4())})
    assert missing["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    bad_cursor = await api.graphql(me, MY_INVOICES, {"first": 1, "after": "bm90IGEgY3Vyc29y"})
    assert bad_cursor["errors"][0]["extensions"] == {"code": "VALIDATION", "field": "after"}


async def test_an_agent_records_payments_that_settle_the_oldest_invoice_first(
        api: Api, pool: Pool, tenant_name: str) -> None:
    (customer, other), _ = await bill_two_periods(pool, tenant_name, 2)
    agent = api.token(tenant_name)

    async def pay(amount: str, ref: str, key: str, who: str = customer,
                  token: str = agent) -> dict[str, Any]:
        body = await api.graphql(token, PAY, {"customer": who, "amount": amount, "ref": ref,
                                              "key": key})
        assert "errors" not in body, body
        result: dict[str, Any] = body["data"]["recordPayment"]
        return result

    first = await pay("30.00", "bank-1", "k1")
    assert first["__typename"] == "RecordPaymentSuccess", first
    assert first["amount"] == {"amountMicros": 30_000_000, "currency": "EUR"}
    (older,) = first["allocations"]
    assert older["amount"]["amountMicros"] == 30_000_000
    assert older["invoice"]["state"] == "PARTIALLY_PAID"
    assert older["invoice"]["remainingAmount"]["amountMicros"] == 2 * FEE - 30_000_000
    assert first["unapplied"]["amountMicros"] == 0
    # The account owed both invoices (3 × 19.99) and has paid 30.00 of it.
    assert first["customer"]["balance"]["balance"]["amountMicros"] == 30_000_000 - 3 * FEE

    second = await pay("20.00", "bank-2", "k2")
    assert [(a["invoice"]["state"], a["amount"]["amountMicros"])
            for a in second["allocations"]] == [
        ("PAID", 2 * FEE - 30_000_000), ("PARTIALLY_PAID", 20_000_000 - (2 * FEE - 30_000_000))]
    assert second["allocations"][0]["invoice"]["id"] == older["invoice"]["id"]

    # A repeat changes nothing and answers the same allocations (invoices as they are now).
    again = await pay("20.00", "bank-2", "k2")
    assert [a["amount"] for a in again["allocations"]] == [
        a["amount"] for a in second["allocations"]]
    assert again["customer"] == second["customer"]
    # Another key for the same bank payment: still one payment.
    same_payment = await pay("20.00", "bank-2", "k2b")
    assert same_payment["customer"] == second["customer"]
    clash = await pay("25.00", "bank-2", "k2")
    assert clash == {"__typename": "ConflictError", "field": "idempotencyKey",
                     "message": "idempotencyKey was already used with a different input"}
    reused = await pay("25.00", "bank-2", "k3")
    assert (reused["__typename"], reused["field"]) == ("ConflictError", "paymentReference")

    for amount, field in (("0", "amount"), ("-5.00", "amount"), ("1.001", "amount"),
                          ("ten", "amount")):
        refused = await pay(amount, "bank-x", f"bad-{amount}")
        assert (refused["__typename"], refused["field"]) == ("ValidationError", field), refused
    nobody = await pay("5.00", "bank-y", "k4", who=str(uuid.uuid4()))
    assert nobody == {"__typename": "NotFoundError", "field": "customerId"}
    by_customer = await pay("5.00", "bank-z", "k5", token=customer_token(
        api, tenant_name, customer))
    assert by_customer["__typename"] == "ForbiddenError"

    last = await pay("15.00", "bank-3", "k6")
    ((invoice, amount),) = [(a["invoice"], a["amount"]["amountMicros"])
                            for a in last["allocations"]]
    assert invoice["state"] == "PAID" and invoice["remainingAmount"]["amountMicros"] == 0
    assert amount + last["unapplied"]["amountMicros"] == 15_000_000
    assert last["customer"]["balance"]["balance"]["amountMicros"] == 65_000_000 - 3 * FEE
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        payments = await conn.fetch("SELECT payment_id, amount_micros FROM payments"
                                    " ORDER BY payment_id")
        others = await conn.fetchval("SELECT count(*) FROM invoices WHERE customer_id = $1"
                                     " AND state = 'issued'", uuid.UUID(other))
    assert [(p["payment_id"], p["amount_micros"]) for p in payments] == [
        ("bank-1", 30_000_000), ("bank-2", 20_000_000), ("bank-3", 15_000_000)]
    assert others == 2  # the other customer's invoices were not touched


# ------------------------------------------------------------------ live


INVOICE_ISSUED = """
subscription Issued($id: UUID) {
  invoiceIssued(customerId: $id) {
    invoiceId billNo kind customerId billingPeriod { start end } state paymentDueDate
    amountDue { amountMicros currency } taxAmount { amountMicros }
    invoice { id remainingAmount { amountMicros } lines { type } }
  }
}"""


async def listeners(api: Api, tenant: str) -> float:
    """The API's live-update listeners of `tenant` (its /metrics gauge)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(api.url.replace("/graphql", "/metrics"))).text
    prefix = f'tollgate_api_live_listeners{{tenant="{tenant}"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines()
               if line.startswith(prefix))


async def subscribe(api: Api, token: str, customer_id: str | None
                    ) -> websockets.ClientConnection:
    ws = await websockets.connect(api.url.replace("http://", "ws://"),
                                  subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init",
                              "payload": {"Authorization": f"Bearer {token}"}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
        "query": INVOICE_ISSUED, "variables": {"id": customer_id}}}))
    return ws


async def issued(ws: websockets.ClientConnection) -> dict[str, Any]:
    message = json.loads(await asyncio.wait_for(ws.recv(), 15))
    assert message["type"] == "next", message
    assert "errors" not in message["payload"], message
    data: dict[str, Any] = message["payload"]["data"]["invoiceIssued"]
    return data


async def relay(pool: Pool, js: JetStreamContext, tenant: str) -> None:
    """What the billing engine's relay does: publish the outbox to NATS."""
    while await relay_once(pool, js, tenant):
        pass


async def test_issued_invoices_reach_the_customers_and_the_agents_subscriptions(
        api: Api, pool: Pool, js: JetStreamContext, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    started = local_midnight(period.start, TZ)
    (mine, _), (theirs, _) = await customers(pool, tenant_name, 2, started)
    me = customer_token(api, tenant_name, str(mine))
    sockets = [await subscribe(api, me, str(mine)),  # named
               await subscribe(api, me, None),  # a customer's default: themself
               await subscribe(api, api.token(tenant_name), None)]  # an agent: everyone's
    try:
        async def registered() -> bool:
            return await listeners(api, tenant_name) == len(sockets)
        await eventually(registered)

        await bill_run(pool, tenant_name, period)  # both customers billed: two events
        await relay(pool, js, tenant_name)
        for ws in sockets[:2]:
            event = await issued(ws)
            assert event["customerId"] == str(mine)
            assert event["kind"] == "INVOICE" and event["state"] == "ISSUED"
            assert event["billingPeriod"] == {"start": period.start.isoformat(),
                                              "end": period.end.isoformat()}
            assert event["amountDue"] == {"amountMicros": 2 * FEE, "currency": "EUR"}
            assert event["taxAmount"] == {"amountMicros": 2 * FEE_TAX}
            assert event["invoice"]["id"] == event["invoiceId"]
            assert event["invoice"]["lines"] == [{"type": "RECURRING"}] * 2
        everyone = {(await issued(sockets[2]))["customerId"] for _ in range(2)}
        assert everyone == {str(mine), str(theirs)}

        # The next period's invoices: the customer's next event is its own again, so the
        # other customer's invoice of the first run never reached it.
        await bill_run(pool, tenant_name, period.next())
        await relay(pool, js, tenant_name)
        for ws in sockets[:2]:
            event = await issued(ws)
            assert (event["customerId"], event["billingPeriod"]["start"]) == (
                str(mine), period.next().start.isoformat())
            assert event["amountDue"]["amountMicros"] == FEE
    finally:
        for ws in sockets:
            await ws.close()


async def test_a_customer_cannot_subscribe_to_another_customers_invoices(
        api: Api, pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    (mine, _), (theirs, _) = await customers(pool, tenant_name, 2,
                                             local_midnight(period.start, TZ))
    ws = await subscribe(api, customer_token(api, tenant_name, str(mine)), str(theirs))
    try:
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert message["type"] == "next"
        assert message["payload"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    finally:
        await ws.close()
    partner = api.token(tenant_name, subject="partner:streamflix", roles=("partner",))
    ws = await subscribe(api, partner, None)
    try:
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert message["payload"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    finally:
        await ws.close()
