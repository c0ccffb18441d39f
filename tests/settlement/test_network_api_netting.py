"""The partner's network API charges are settled on its settlement statement (ADRs 0012,
0015): the statement nets them against the partner's revenue share, one ledger transfer
clears the receivable the calls debited, the payable keeps the net, and late calls go to the
next statement. Real PostgreSQL, the real charging engine for the revenue share.

Worked example (EUR micro-units; statements of month M, settled monthly):
  Offer `api-bundle`: 0.10 EUR per API event. One usage event of 10 events in M → gross
  1,000,000. Agreement `apico` shares 40 % of it → 400,000 payable to the partner.
  `apico` also calls QoD, tiered: calls 1–2 of a month at 0.25, later ones at 0.10.
  4 calls in M → 250,000 + 250,000 + 100,000 + 100,000 = 700,000 owed by the partner.
  apico's statement: payable 400,000, network API charges 700,000, net −300,000: the
  partner pays the operator 0.30 EUR. Netting transfer partnerPayable:apico →
  receivable:partner:apico, 700,000; afterwards the receivable is 0 and the payable
  −300,000.
  `usdco` (settled in USD at 1.0825, no revenue share) calls QoD at 0.0137 per call, 3 calls
  → 41,100 EUR micros = 44,490.75 USD micros → 0.04 USD (half-even to cents); net −0.04 USD.
  A late call of M (made after M's statement, e.g. by a replica with a lagging clock) and a
  call of M+1 go on apico's statement of M+1 (numbers 4 and 0 of their months: 100,000 and
  250,000), one of them carried from M.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client

from tests.conftest import Servers
from tests.factories import install_example_catalog, offer_document
from tests.running import StartEngine, eventually
from tests.settlement.test_settlement_flow import (
    agreement,
    assert_ledger_balanced,
    at,
    balances,
    line,
    months_ago,
    owner_fetch,
    rated_count,
    send_calls,
)
from tollgate_core import catalog_service
from tollgate_core.domain.ledger import transfer_id
from tollgate_core.domain.network_api import QodRequest, QosProfile
from tollgate_core.domain.settlement import parse_period, statement_id
from tollgate_core.network_api_service import request_quality_on_demand
from tollgate_core.resources import Offer, PartnerAgreement, parse_resource
from tollgate_core.settlement.statements import run_statements
from tollgate_core.store.db import Pool, tenant_tx

LINE = "491705559001"
USD_RATE = "1.0825"


async def catalog(pool: Pool, tenant: str) -> None:
    await install_example_catalog(pool, tenant)
    apico = agreement(tenant, "apico", "EUR", {"model": "percentage", "percent": "40"},
                      {"period": "monthly"}, offers=["api-bundle"])
    apico["spec"]["role"] = "apiConsumer"
    apico["spec"]["networkApis"] = [{"name": "qod", "rateLimitPerSecond": 100, "tiers": [
        {"from": 0, "to": 2, "pricePerCall": "0.25"}, {"from": 2, "pricePerCall": "0.10"}]}]
    usdco = agreement(tenant, "usdco", "USD", {"model": "percentage", "percent": "0"},
                      {"period": "monthly"})
    usdco["spec"]["role"] = "apiConsumer"
    usdco["spec"]["networkApis"] = [{"name": "qod", "pricePerCall": "0.0137"}]
    documents = [
        offer_document(tenant, "api-bundle", prices=[{
            "name": "api-calls", "priceType": "usage",
            "usage": {"service": "api", "unit": "events",
                      "tiers": [{"from": 0, "unitPrice": "0.10"}]}}]),
        apico, usdco]
    resources = [parse_resource(d) for d in documents]
    result = await catalog_service.apply_catalog(
        pool, tenant,
        {r.metadata.name: r.spec for r in resources if isinstance(r, Offer)},
        {r.metadata.name: r.spec for r in resources if isinstance(r, PartnerAgreement)})
    assert result.valid, result.errors


async def qod_call(pool: Pool, tenant: str, agreement_name: str, key: str,
                   when: Any) -> int:
    session = await request_quality_on_demand(
        pool, tenant, agreement_name, QodRequest("491705559999", QosProfile.QOS_M, 600), key,
        when)
    assert not session.repeated
    return session.price_micros


def micros(lines: dict[str, Any], *keys: str) -> dict[str, int]:
    return {k: lines[k]["amountMicros"] for k in keys}


async def test_statement_nets_network_api_charges_against_shares_and_clears_receivable(
        pool: Pool, nats_client: Client, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    tenant = tenant_name
    month, following = months_ago(2), months_ago(1)
    await catalog(pool, tenant)
    await line(pool, tenant, "api-bundle", LINE)
    await charging(tenant)
    await send_calls(nats_client, tenant, LINE, [10], at(month + timedelta(3)))

    async def rated() -> bool:
        return await rated_count(servers, tenant) == 1

    await eventually(rated)
    prices = [await qod_call(pool, tenant, "apico", f"a{i}", at(month + timedelta(4), 9 + i))
              for i in range(4)]
    assert prices == [250_000, 250_000, 100_000, 100_000]
    assert [await qod_call(pool, tenant, "usdco", f"u{i}", at(month + timedelta(6)))
            for i in range(3)] == [13_700] * 3
    before = await balances(servers, tenant)
    assert (before["partnerPayable:apico"], before["receivable:partner:apico"],
            before["receivable:partner:usdco"]) == (400_000, -700_000, -41_100)

    label = month.strftime("%Y-%m")
    results = await run_statements(pool, tenant, label, {"USD": USD_RATE},
                                   agreements=["apico", "usdco"])
    assert [r.error for r in results] == [None, None]
    made = {r.agreement: r.statement for r in results}
    apico, usdco = made["apico"], made["usdco"]
    assert apico is not None and usdco is not None

    assert apico["version"] == 2
    assert micros(apico["ledger"], "gross", "partnerShare", "payable", "networkApiCharges",
                  "net") == {"gross": 1_000_000, "partnerShare": 400_000, "payable": 400_000,
                             "networkApiCharges": 700_000, "net": -300_000}
    assert apico["networkApis"] == {
        "calls": 4,
        "charges": {"amountMicros": 700_000, "amount": "0.70", "currency": "EUR"},
        "byApi": [{"api": "qod", "calls": 4, "charges": {
            "amountMicros": 700_000, "amount": "0.70", "currency": "EUR"}}],
        "carriedFromEarlierPeriods": {"calls": 0, "charges": {
            "amountMicros": 0, "amount": "0.00", "currency": "EUR"}}}
    assert [apico["settlement"][k]["amount"] for k in
            ("payable", "networkApiCharges", "net")] == ["0.40", "0.70", "-0.30"]
    assert apico["settlement"]["netDirection"] == "partnerPaysOperator"
    sid = statement_id(tenant, "apico", parse_period(label))
    netting = transfer_id(f"statement:{sid}", "networkApiNetting")
    assert apico["transfers"] == [str(netting)]

    # usdco: 41,100 EUR micros × 1.0825 = 44,490.75 USD micros → 0.04 USD; nothing earned.
    assert micros(usdco["ledger"], "payable", "networkApiCharges", "net") == {
        "payable": 0, "networkApiCharges": 41_100, "net": -41_100}
    assert (usdco["settlement"]["currency"], usdco["settlement"]["fxRate"]) == ("USD",
                                                                                USD_RATE)
    assert [usdco["settlement"][k]["amount"] for k in
            ("payable", "networkApiCharges", "net")] == ["0.00", "0.04", "-0.04"]

    # The ledger: the receivables are cleared, the payables hold the net positions.
    after = await balances(servers, tenant)
    assert (after["receivable:partner:apico"], after["partnerPayable:apico"]) == (0, -300_000)
    assert (after["receivable:partner:usdco"], after["partnerPayable:usdco"]) == (0, -41_100)
    assert after["revenue:networkApi"] == before["revenue:networkApi"] == 741_100
    rows = await owner_fetch(servers, "SELECT debit_account, credit_account, amount_micros,"
                             " code, cause_id FROM transfers WHERE tenant_id = $1"
                             " AND transfer_id = $2", tenant, netting)
    assert [tuple(r.values()) for r in rows] == [
        ("partnerPayable:apico", "receivable:partner:apico", 700_000, "partnerNetting",
         str(sid))]
    stored = await owner_fetch(
        servers, "SELECT network_api_calls, network_api_micros, net_micros,"
        " settled_network_api_micros, settled_net_micros FROM settlement_statements"
        " WHERE tenant_id = $1 AND agreement = 'usdco'", tenant)
    assert [tuple(r.values()) for r in stored] == [(3, 41_100, -41_100, 40_000, -40_000)]
    calls = await owner_fetch(servers, "SELECT agreement, statement_id FROM network_api_calls"
                              " WHERE tenant_id = $1", tenant)
    assert {(r["agreement"], r["statement_id"]) for r in calls} == {
        ("apico", sid), ("usdco", statement_id(tenant, "usdco", parse_period(label)))}
    await assert_ledger_balanced(servers, tenant)

    # A rerun changes nothing: same documents, no new transfer.
    count = len(await owner_fetch(servers, "SELECT 1 FROM transfers WHERE tenant_id = $1",
                                  tenant))
    again = await run_statements(pool, tenant, label, {"USD": USD_RATE},
                                 agreements=["apico", "usdco"])
    assert [(r.statement, r.created) for r in again] == [(apico, False), (usdco, False)]
    assert len(await owner_fetch(servers, "SELECT 1 FROM transfers WHERE tenant_id = $1",
                                 tenant)) == count

    # A late call of M (number 4 of M: 100,000) and the first of M+1 (250,000) go on the
    # statement of M+1; the statement of M stays as it was.
    assert await qod_call(pool, tenant, "apico", "late", at(month + timedelta(20))) == 100_000
    assert await qod_call(pool, tenant, "apico", "next", at(following + timedelta(2))) \
        == 250_000
    next_label = following.strftime("%Y-%m")
    following_results = await run_statements(pool, tenant, next_label, {"USD": USD_RATE},
                                             agreements=["apico"])
    nxt = following_results[0].statement
    assert nxt is not None
    assert micros(nxt["ledger"], "payable", "networkApiCharges", "net") == {
        "payable": 0, "networkApiCharges": 350_000, "net": -350_000}
    assert nxt["networkApis"]["calls"] == 2
    assert nxt["networkApis"]["carriedFromEarlierPeriods"]["calls"] == 1
    assert nxt["networkApis"]["carriedFromEarlierPeriods"]["charges"]["amountMicros"] \
        == 100_000
    final = await balances(servers, tenant)
    assert (final["receivable:partner:apico"], final["partnerPayable:apico"]) == (
        0, -650_000)
    assert (await run_statements(pool, tenant, label, {"USD": USD_RATE},
                                 agreements=["apico"]))[0].statement == apico
    await assert_ledger_balanced(servers, tenant)

    # Call records stay history: the charge cannot change, a settled call stays settled.
    for statement, error in (
            ("UPDATE network_api_calls SET price_micros = 0",
             asyncpg.InsufficientPrivilegeError),
            ("DELETE FROM network_api_calls", asyncpg.InsufficientPrivilegeError),
            ("UPDATE network_api_calls SET statement_id = gen_random_uuid()",
             asyncpg.CheckViolationError)):
        with pytest.raises(error):
            async with tenant_tx(pool, tenant) as conn:
                await conn.execute(statement)
    async with tenant_tx(pool, f"{tenant}-other", readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM network_api_calls") == 0


async def test_a_statement_without_calls_or_shares_moves_nothing(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    tenant = tenant_name
    await catalog(pool, tenant)
    label = months_ago(1).strftime("%Y-%m")
    results = await run_statements(pool, tenant, label, {"USD": USD_RATE},
                                   agreements=["apico"])
    body = results[0].statement
    assert body is not None
    assert micros(body["ledger"], "payable", "networkApiCharges", "net") == {
        "payable": 0, "networkApiCharges": 0, "net": 0}
    assert body["settlement"]["netDirection"] == "none"
    assert body["transfers"] == [] and body["networkApis"]["byApi"] == []
    rows = await owner_fetch(servers, "SELECT count(*) AS n FROM transfers"
                             " WHERE tenant_id = $1 AND cause_id = $2", tenant,
                             str(uuid.UUID(body["id"])))
    assert rows[0]["n"] == 0
