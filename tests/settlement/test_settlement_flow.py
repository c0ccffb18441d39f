"""Partner settlement end to end: usage rated by the real charging engine from NATS accrues
partner shares in the same transaction (operator + partners = gross per record, ledger
balanced); monthly statements apply the minimum guarantee and the cap, convert at an exact FX
rate, are made once, carry late usage to the next statement and go out as events.

The worked example (all amounts in micro-units of EUR unless said otherwise). Offer
`partner-api` prices API calls at 0.0137 EUR = 13,700 micros each. Two agreements share it:
`videoco` (its partnerRef) 12.5 %, minimum guarantee 0.05 EUR a month, settled in EUR; and
`bigco` (offerSelector) 15.5 %, cap 0.02 EUR a month, settled in USD. `futureco` selects it
too but is valid only from next month. Offer `partner-tiered` (same price) is shared with
`tierco`: 10 % of the month's gross below 0.05 EUR, 30 % above, settled `realtime`
(daily statements; the tiers still count the month's gross).

Records of partner-api in month M (calls → gross → exact shares → rounded):
  1 call  →  13,700: videoco 1,712.5, bigco 2,123.5, operator 9,864 exactly. One micro is
            left after the floors; videoco and bigco tie at .5 → the first name, bigco.
            → videoco 1,712, bigco 2,124, operator 9,864
  3 calls →  41,100: videoco 5,137.5, bigco 6,370.5, operator 29,592 → 5,137 / 6,371 / 29,592
  7 calls →  95,900: videoco 11,987.5, bigco 14,864.5, operator 69,048
            → 11,987 / 14,865 / 69,048
  month: gross 150,700; videoco 18,836; bigco 23,360; operator 108,504.
Records of partner-tiered in month M, in order (running gross before → after):
  2 calls → 27,400 (0 → 27,400, all below 50,000 at 10 %) → 2,740
  3 calls → 41,100 (27,400 → 68,500: 22,600 at 10 % + 18,500 at 30 %) → 2,260 + 5,550 = 7,810
  2 calls → 27,400 (68,500 → 95,900, all at 30 %) → 8,220
  month: gross 95,900; tierco 18,770; operator 77,130.
Statements of month M:
  videoco: share 18,836 < minimum 50,000 → top-up 31,164, payable 50,000. In EUR cents
           (half-even): gross 0.15, share 0.02, payable 0.05, adjustment 0.03.
  bigco:   share 23,360 > cap 20,000 → clawback 3,360, payable 20,000. At 1.0825 USD/EUR:
           gross 0.163132… → 0.16 USD, share 0.025287… → 0.03, payable 0.021650 → 0.02,
           adjustment −0.01, operator 0.13.
  tierco:  one statement per day; the day of its records: payable 18,770 → 0.02 EUR.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.conftest import Servers
from tests.factories import install_example_catalog, offer_document, usage_payload
from tests.running import StartEngine, eventually
from tollgate_core import catalog_service, customer_service
from tollgate_core.domain.ledger import transfer_id
from tollgate_core.domain.settlement import parse_period, statement_id
from tollgate_core.resources import Offer, PartnerAgreement, parse_resource
from tollgate_core.settlement.statements import run_statements
from tollgate_core.store.db import Pool, tenant_tx

BERLIN = ZoneInfo("Europe/Berlin")
API_LINE = "491705550001"
TIERED_LINE = "491705550002"
PREPAID_LINE = "491705550003"
USD_RATE = "1.0825"


def months_ago(count: int) -> date:
    first = datetime.now(BERLIN).date().replace(day=1)
    for _ in range(count):
        first = (first - timedelta(days=1)).replace(day=1)
    return first


def at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), BERLIN)


def api_price() -> list[dict[str, Any]]:
    return [{"name": "api-calls", "priceType": "usage",
             "usage": {"service": "api", "unit": "events",
                       "tiers": [{"from": 0, "unitPrice": "0.0137", "per": 1}]}}]


def agreement(tenant: str, name: str, currency: str, share: dict[str, Any],
              settlement: dict[str, Any], offers: list[str] | None = None,
              valid_for: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tenantRef": {"name": tenant},
        "partner": {"id": name, "displayName": name.title(),
                    "contactEmail": f"billing@{name}.example", "settlementCurrency": currency},
        "role": "contentProvider", "offerSelector": {"offers": offers or []},
        "revenueShare": share, "settlement": settlement}
    if valid_for:
        spec["validFor"] = valid_for
    return {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "PartnerAgreement",
            "metadata": {"name": name}, "spec": spec}


async def partner_catalog(pool: Pool, tenant: str) -> None:
    await install_example_catalog(pool, tenant)
    next_month = at((months_ago(0) + timedelta(days=32)).replace(day=1), 0).isoformat()
    documents = [
        offer_document(tenant, "partner-api", prices=api_price(),
                       partnerRef={"name": "videoco"}),
        offer_document(tenant, "partner-tiered", prices=api_price()),
        agreement(tenant, "videoco", "EUR", {"model": "percentage", "percent": "12.5"},
                  {"period": "monthly", "minimumGuarantee": "0.05"}),
        agreement(tenant, "bigco", "USD", {"model": "percentage", "percent": "15.5"},
                  {"period": "monthly", "cap": "0.02"}, offers=["partner-api"]),
        agreement(tenant, "futureco", "EUR", {"model": "percentage", "percent": "50"},
                  {"period": "monthly", "minimumGuarantee": "100"}, offers=["partner-api"],
                  valid_for={"start": next_month}),
        agreement(tenant, "tierco", "EUR", {"model": "tiered", "tiers": [
            {"fromAmount": "0", "percent": "10"}, {"fromAmount": "0.05", "percent": "30"}]},
                  {"period": "realtime"}, offers=["partner-tiered"]),
    ]
    resources = [parse_resource(d) for d in documents]
    result = await catalog_service.apply_catalog(
        pool, tenant,
        {r.metadata.name: r.spec for r in resources if isinstance(r, Offer)},
        {r.metadata.name: r.spec for r in resources if isinstance(r, PartnerAgreement)})
    assert result.valid, result.errors


async def line(pool: Pool, tenant: str, offer: str, msisdn: str,
               payment_type: str = "postpaid") -> uuid.UUID:
    customer = await customer_service.register_customer(
        pool, tenant, name="Partner Test", email="p@example.de", payment_type=payment_type,
        customer_type="consumer", idempotency_key=f"reg-{msisdn}")
    await customer_service.place_order(pool, tenant, customer_id=customer, offer=offer,
                                       subscriber=msisdn, idempotency_key=f"order-{msisdn}")
    return customer


async def send_calls(nc: Client, tenant: str, msisdn: str, calls: list[int],
                     when: datetime) -> list[str]:
    """Publish one usage event per entry (that many API calls), in order."""
    js = nc.jetstream()
    ids = []
    for count in calls:
        event_id, payload = usage_payload(tenant, msisdn, count, service="api", unit="events",
                                          start_time=when)
        await js.publish(f"tg.{tenant}.usage.api", payload, headers={"Nats-Msg-Id": event_id})
        ids.append(event_id)
    return ids


async def owner_fetch(servers: Servers, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def rated_count(servers: Servers, tenant: str) -> int:
    rows = await owner_fetch(servers, "SELECT count(*) AS n FROM rated_usage"
                             " WHERE tenant_id = $1", tenant)
    return int(rows[0]["n"])


async def shares_by_record(servers: Servers, tenant: str
                           ) -> dict[str, tuple[int, int, dict[str, int]]]:
    """event id → (gross, operator share, {agreement: share}) from the accrual rows."""
    rows = await owner_fetch(
        servers, "SELECT event_id, agreement, gross_micros, operator_micros, share_micros"
        " FROM partner_accruals WHERE tenant_id = $1", tenant)
    found: dict[str, tuple[int, int, dict[str, int]]] = {}
    for r in rows:
        gross, operator, shares = found.setdefault(
            str(r["event_id"]), (r["gross_micros"], r["operator_micros"], {}))
        assert (gross, operator) == (r["gross_micros"], r["operator_micros"])
        shares[r["agreement"]] = r["share_micros"]
    return found


async def balances(servers: Servers, tenant: str) -> dict[str, int]:
    rows = await owner_fetch(servers, "SELECT account_id, balance_micros FROM ledger_accounts"
                             " WHERE tenant_id = $1", tenant)
    return {r["account_id"]: r["balance_micros"] for r in rows}


async def assert_ledger_balanced(servers: Servers, tenant: str) -> None:
    """Invariant 2: the ledger sums to zero and every balance is the sum of its transfers."""
    rows = await owner_fetch(servers, """
        SELECT (SELECT sum(balance_micros) FROM ledger_accounts WHERE tenant_id = $1) AS total,
          (SELECT count(*) FROM ledger_accounts a WHERE a.tenant_id = $1 AND a.balance_micros
            <> coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = $1
                         AND t.credit_account = a.account_id), 0)
             - coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = $1
                         AND t.debit_account = a.account_id), 0)) AS mismatched""", tenant)
    assert (rows[0]["total"], rows[0]["mismatched"]) == (0, 0)


async def ledger_snapshot(servers: Servers, tenant: str) -> tuple[int, int, int, int]:
    rows = await owner_fetch(
        servers, "SELECT (SELECT count(*) FROM transfers WHERE tenant_id = $1) AS n,"
        " (SELECT coalesce(sum(amount_micros), 0) FROM transfers WHERE tenant_id = $1) AS s,"
        " (SELECT count(*) FROM settlement_statements WHERE tenant_id = $1) AS st,"
        " (SELECT count(*) FROM outbox WHERE tenant_id = $1"
        "  AND subject LIKE '%.evt.settlement.statement') AS ev", tenant)
    return rows[0]["n"], rows[0]["s"], rows[0]["st"], rows[0]["ev"]


def cli(servers: Servers, *args: str) -> subprocess.CompletedProcess[str]:
    tollgate = Path(sys.executable).parent / "tollgate"
    return subprocess.run([str(tollgate), "settlement", *args, "--database-url",
                           servers.app_dsn], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "TERM": "dumb", "COLUMNS": "200"})


async def test_accruals_statements_minimum_cap_fx_and_late_usage(
        pool: Pool, nats_client: Client, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    tenant = tenant_name
    month, following = months_ago(2), months_ago(1)
    await partner_catalog(pool, tenant)
    await line(pool, tenant, "partner-api", API_LINE)
    await line(pool, tenant, "partner-tiered", TIERED_LINE)
    await charging(tenant)
    received: list[Msg] = []

    async def collect(msg: Msg) -> None:
        received.append(msg)

    events = await nats_client.subscribe(f"tg.{tenant}.evt.settlement.statement", cb=collect)

    api_ids = await send_calls(nats_client, tenant, API_LINE, [1, 3, 7], at(month + timedelta(9)))
    tiered_ids = await send_calls(nats_client, tenant, TIERED_LINE, [2, 3, 2],
                                  at(month + timedelta(12)))

    async def all_rated() -> bool:
        return await rated_count(servers, tenant) == 6

    await eventually(all_rated)

    # Real time: the accruals were written with the records, exact per record.
    records = await shares_by_record(servers, tenant)
    assert records == {
        api_ids[0]: (13_700, 9_864, {"videoco": 1_712, "bigco": 2_124}),
        api_ids[1]: (41_100, 29_592, {"videoco": 5_137, "bigco": 6_371}),
        api_ids[2]: (95_900, 69_048, {"videoco": 11_987, "bigco": 14_865}),
        tiered_ids[0]: (27_400, 24_660, {"tierco": 2_740}),
        tiered_ids[1]: (41_100, 33_290, {"tierco": 7_810}),
        tiered_ids[2]: (27_400, 19_180, {"tierco": 8_220}),
    }
    for gross, operator, shares in records.values():
        assert operator + sum(shares.values()) == gross
    # futureco is not valid at the events' time: no accrual, no payable account.
    ledger = await balances(servers, tenant)
    assert "partnerPayable:futureco" not in ledger
    assert (ledger["partnerPayable:videoco"], ledger["partnerPayable:bigco"],
            ledger["partnerPayable:tierco"]) == (18_836, 23_360, 18_770)
    # revenue: 150,700 + 95,900 of usage less 18,836 + 23,360 + 18,770 of shares
    assert ledger["revenue:usage"] == 246_600 - 60_966
    share_transfers = await owner_fetch(
        servers, "SELECT transfer_id, debit_account, credit_account, amount_micros, code"
        " FROM transfers WHERE tenant_id = $1 AND cause_id = $2 ORDER BY credit_account",
        tenant, api_ids[2])
    assert [tuple(r.values()) for r in share_transfers if r["code"] == "partnerShare"] == [
        (transfer_id(api_ids[2], "share:bigco"), "revenue:usage", "partnerPayable:bigco",
         14_865, "partnerShare"),
        (transfer_id(api_ids[2], "share:videoco"), "revenue:usage", "partnerPayable:videoco",
         11_987, "partnerShare")]
    gross_rows = await owner_fetch(servers, "SELECT agreement, month, gross_micros FROM"
                                   " partner_gross WHERE tenant_id = $1", tenant)
    assert [tuple(r.values()) for r in gross_rows] == [("tierco", month, 95_900)]
    await assert_ledger_balanced(servers, tenant)

    # The period is not over: no statement for the running month.
    with_error = await _refused(pool, tenant, datetime.now(BERLIN).strftime("%Y-%m"))
    assert "is not over" in with_error

    label = month.strftime("%Y-%m")
    results = await run_statements(pool, tenant, label, {"USD": USD_RATE})
    assert [r.error for r in results] == [None] * len(results)
    assert all(r.created for r in results if r.statement is not None)
    made = {r.agreement: r.statement for r in results
            if r.statement is not None and r.agreement != "tierco"}
    assert sorted(made) == ["bigco", "streamflix", "videoco"]  # futureco: not valid yet
    daily = {r.period.start: r.statement for r in results if r.agreement == "tierco"}
    days = (following - month).days
    assert sorted(daily) == [month + timedelta(i) for i in range(days)]

    videoco = made["videoco"]
    assert videoco is not None
    assert videoco["records"] == 3
    assert _micros(videoco["ledger"]) == {"gross": 150_700, "partnerShare": 18_836,
                                          "operatorShare": 131_864, "adjustment": 31_164,
                                          "payable": 50_000}
    assert videoco["ledger"]["adjustmentKind"] == "minimumGuarantee"
    assert videoco["settlement"]["fxRate"] is None
    assert _amounts(videoco["settlement"]) == {"gross": "0.15", "partnerShare": "0.02",
                                               "operatorShare": "0.13", "adjustment": "0.03",
                                               "payable": "0.05"}

    bigco = made["bigco"]
    assert bigco is not None
    assert _micros(bigco["ledger"]) == {"gross": 150_700, "partnerShare": 23_360,
                                        "operatorShare": 127_340, "adjustment": -3_360,
                                        "payable": 20_000}
    assert bigco["ledger"]["adjustmentKind"] == "cap"
    assert (bigco["settlement"]["currency"], bigco["settlement"]["fxRate"]) == ("USD",
                                                                                USD_RATE)
    assert _amounts(bigco["settlement"]) == {"gross": "0.16", "partnerShare": "0.03",
                                             "operatorShare": "0.13", "adjustment": "-0.01",
                                             "payable": "0.02"}

    tierco = daily[month + timedelta(12)]
    assert tierco is not None
    assert tierco["period"]["kind"] == "daily"
    assert tierco["records"] == 3
    assert sum(d["records"] for d in daily.values() if d) == 3
    assert _micros(tierco["ledger"])["payable"] == 18_770
    assert tierco["ledger"]["adjustmentKind"] is None
    assert _amounts(tierco["settlement"])["payable"] == "0.02"
    streamflix = made["streamflix"]
    assert streamflix is not None and streamflix["records"] == 0

    # The top-up and the clawback are ledger transfers; payables now hold what is owed.
    ledger = await balances(servers, tenant)
    assert (ledger["partnerPayable:videoco"], ledger["partnerPayable:bigco"],
            ledger["partnerPayable:tierco"]) == (50_000, 20_000, 18_770)
    assert ledger["revenue:usage"] == 246_600 - 60_966 - 31_164 + 3_360
    sid = statement_id(tenant, "videoco", parse_period(label))
    topup = await owner_fetch(servers, "SELECT debit_account, credit_account, amount_micros,"
                              " code FROM transfers WHERE tenant_id = $1 AND transfer_id = $2",
                              tenant, transfer_id(f"statement:{sid}", "minimumGuarantee"))
    assert [tuple(r.values()) for r in topup] == [
        ("revenue:usage", "partnerPayable:videoco", 31_164, "partnerMinimumGuarantee")]
    assert videoco["transfers"] == [str(transfer_id(f"statement:{sid}", "minimumGuarantee"))]
    await assert_ledger_balanced(servers, tenant)

    # Every accrual of the month is on exactly one statement.
    unclaimed = await owner_fetch(servers, "SELECT count(*) AS n FROM partner_accruals"
                                  " WHERE tenant_id = $1 AND statement_id IS NULL", tenant)
    assert unclaimed[0]["n"] == 0

    # A rerun is harmless: the same documents, no new transfer, statement or event.
    before = await ledger_snapshot(servers, tenant)
    assert before[2:] == (3 + days, 3 + days)
    again = await run_statements(pool, tenant, label, {"USD": USD_RATE})
    assert [(r.agreement, r.period, r.statement) for r in again] == [
        (r.agreement, r.period, r.statement) for r in results]
    assert not any(r.created for r in again)
    assert await ledger_snapshot(servers, tenant) == before

    # The statements go out on NATS through the outbox (relayed by the running engine).
    async def all_events() -> bool:
        return len(received) >= 3 + days

    await eventually(all_events)
    payloads = [json.loads(m.data) for m in received]
    assert {p["type"] for p in payloads} == {"dev.tollgate.settlement.statement.v1"}
    by_agreement = {p["data"]["agreement"]: p["data"] for p in payloads
                    if p["data"]["records"] or p["data"]["agreement"] != "tierco"}
    assert by_agreement["videoco"]["payable"]["amountMicros"] == 50_000
    assert by_agreement["bigco"]["settlementPayable"] == {"amountMicros": 20_000,
                                                          "amount": "0.02", "currency": "USD"}
    assert by_agreement["tierco"]["period"]["start"] == (month + timedelta(12)).isoformat()
    assert {m.header["Nats-Msg-Id"] for m in received if m.header} == {
        str(statement_id(tenant, r.agreement, r.period)) for r in results if r.statement}
    await events.unsubscribe()

    # Late usage: one more call of month M after its statement, and one of the next month.
    # The statement of M does not change; the next month's statement carries the late one.
    late = await send_calls(nats_client, tenant, API_LINE, [1], at(month + timedelta(20)))
    await send_calls(nats_client, tenant, API_LINE, [3], at(following + timedelta(3)))

    async def late_rated() -> bool:
        return await rated_count(servers, tenant) == 8

    await eventually(late_rated)
    assert (await shares_by_record(servers, tenant))[late[0]] == (
        13_700, 9_864, {"videoco": 1_712, "bigco": 2_124})

    # Through the command line: without the USD rate bigco is refused (exit 1), the others
    # are made; with it, bigco is made and the others are shown as they are.
    next_label = following.strftime("%Y-%m")
    refused = await asyncio.to_thread(cli, servers, "statements", "--tenant", tenant,
                                      "--period", next_label)
    assert refused.returncode == 1, refused.stderr
    assert "--rate USD=" in refused.stderr
    done = await asyncio.to_thread(cli, servers, "statements", "--tenant", tenant, "--period",
                                   next_label, "--rate", f"USD={USD_RATE}", "--json")
    assert done.returncode == 0, done.stderr
    documents = {d["agreement"]: d for d in json.loads(done.stdout)
                 if d["agreement"] != "tierco"}
    # videoco next month: the late call (1,712) and 3 calls (5,137) = 6,849, below the
    # minimum 50,000 → top-up 43,151. One record was carried from month M.
    assert documents["videoco"]["records"] == 2
    assert documents["videoco"]["carriedFromEarlierPeriods"]["records"] == 1
    assert _micros(documents["videoco"]["ledger"])["adjustment"] == 43_151
    # bigco next month: 2,124 + 6,371 = 8,495, below the cap: nothing clawed back.
    assert _micros(documents["bigco"]["ledger"]) == {
        "gross": 54_800, "partnerShare": 8_495, "operatorShare": 46_305, "adjustment": 0,
        "payable": 8_495}
    shown = await asyncio.to_thread(cli, servers, "show", "--tenant", tenant, "--period",
                                    label, "--agreement", "videoco")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == [videoco]
    await assert_ledger_balanced(servers, tenant)

    # Statements are immutable to the application role, a claimed accrual stays claimed and
    # its amounts cannot be changed, and another tenant sees none of it.
    for statement, error in (
            ("UPDATE settlement_statements SET payable_micros = 0",
             asyncpg.InsufficientPrivilegeError),
            ("DELETE FROM settlement_statements", asyncpg.InsufficientPrivilegeError),
            ("UPDATE partner_accruals SET share_micros = 0", asyncpg.InsufficientPrivilegeError),
            ("DELETE FROM partner_accruals", asyncpg.InsufficientPrivilegeError),
            ("UPDATE partner_accruals SET statement_id = gen_random_uuid()",
             asyncpg.CheckViolationError)):
        with pytest.raises(error):
            async with tenant_tx(pool, tenant) as conn:
                await conn.execute(statement)
    async with tenant_tx(pool, f"{tenant}-other", readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM settlement_statements") == 0
        assert await conn.fetchval("SELECT count(*) FROM partner_accruals") == 0
        assert await conn.fetchval("SELECT count(*) FROM partner_gross") == 0


async def test_online_commits_accrue_partner_shares(
        pool: Pool, nats_client: Client, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    tenant = tenant_name
    await partner_catalog(pool, tenant)
    customer = await line(pool, tenant, "partner-api", PREPAID_LINE, payment_type="prepaid")
    await customer_service.top_up(pool, tenant, customer_id=customer, amount="1.00",
                                  idempotency_key="topup")
    await charging(tenant)
    granted = await _request(nats_client, tenant, "reserve", sessionId="s1", requestNumber=0,
                             subscriber=PREPAID_LINE, service="api", units=10)
    assert (granted["result"], granted["grantedUnits"]) == ("SUCCESS", 10)
    # 7 calls used: 95,900 charged; videoco 11,987, bigco 14,865, operator 69,048.
    for _ in range(2):  # a repeated commit answers the same and books nothing more
        committed = await _request(nats_client, tenant, "commit",
                                   reservationId=granted["reservationId"], usedUnits=7)
        assert (committed["result"], committed["chargedMicros"]) == ("SUCCESS", 95_900)
        records = await shares_by_record(servers, tenant)
        assert records == {granted["reservationId"]: (
            95_900, 69_048, {"videoco": 11_987, "bigco": 14_865})}
        ledger = await balances(servers, tenant)
        assert (ledger[f"customer:{customer}"], ledger["partnerPayable:videoco"],
                ledger["partnerPayable:bigco"]) == (1_000_000 - 95_900, 11_987, 14_865)
    await assert_ledger_balanced(servers, tenant)


async def _refused(pool: Pool, tenant: str, period: str) -> str:
    from tollgate_core.domain.settlement import SettlementError

    try:
        await run_statements(pool, tenant, period, {})
    except SettlementError as exc:
        return str(exc)
    raise AssertionError("a statement run for an open period was accepted")


async def _request(nc: Client, tenant: str, operation: str, **body: Any) -> dict[str, Any]:
    reply = await nc.request(f"tg.{tenant}.charge.{operation}", json.dumps(body).encode(),
                             timeout=30)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


def _micros(lines: dict[str, Any]) -> dict[str, int]:
    return {k: lines[k]["amountMicros"] for k in
            ("gross", "partnerShare", "operatorShare", "adjustment", "payable")}


def _amounts(lines: dict[str, Any]) -> dict[str, str]:
    return {k: lines[k]["amount"] for k in
            ("gross", "partnerShare", "operatorShare", "adjustment", "payable")}
