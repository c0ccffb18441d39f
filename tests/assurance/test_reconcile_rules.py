"""Reconciliation rules on a hand-made extract: each line exercises one rule of
docs/legacy-feed.md (rounding to cents, fallback matching, duplicates, tolerance, totals)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from nats.js import JetStreamContext

from tests.assurance.helpers import Population, populate
from tollgate_core.assurance.legacy_feed import FeedError
from tollgate_core.assurance.reconcile import Tolerance, reconcile
from tollgate_core.store import reconcile_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_core.store.outbox import relay_once

BERLIN = ZoneInfo("Europe/Berlin")
DAY = datetime(2026, 11, 20, tzinfo=BERLIN)
NEXT_DAY = DAY + timedelta(days=1)


def at(hour: int, micro: int = 0) -> datetime:
    return DAY + timedelta(hours=hour, microseconds=micro)


# (name, line, service, hour, quantity, amount in micro-units)
TOLLGATE = [
    ("A", 0, "data", 10, 1_048_576, 12_345_678),  # 1234.5678 cents → 1235
    ("B", 0, "voice", 11, 60, 125_000),  # 12.5 cents → 12 (half-even)
    ("C", 1, "sms", 12, 1, 90_000),
    ("D", 1, "data", 13, 1_024, 5_000),  # 0.5 cent → 0
    ("E", 2, "voice", 14, 120, 200_000),
    ("F", 2, "sms", 15, 1, 90_000),
    ("G", 2, "data", 16, 2_048, 1_000_000),
    ("H", 0, "sms", 17, 1, 90_000),
    ("I", 1, "voice", 18, 60, 100_000),
]
IDS = {name: uuid.uuid5(uuid.NAMESPACE_URL, f"rule-{name}") for name, *_ in TOLLGATE}
UNKNOWN = uuid.uuid5(uuid.NAMESPACE_URL, "unknown")


async def insert_rated(pool: Pool, tenant: str, population: Population) -> None:
    async with tenant_tx(pool, tenant) as conn:
        for name, line, service, hour, quantity, amount in TOLLGATE:
            await conn.execute(
                "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id,"
                " service, quantity, allowance_units, chargeable_units, amount_micros,"
                " currency, catalog_revision, start_time) VALUES ($1, $2, $3, $4, $5, $6, 0,"
                " $6, $7, 'EUR', $8, $9)", tenant, IDS[name], population.subscriptions[line],
                population.customers[line], service, quantity, amount, population.revision,
                at(hour, 1))


def write_extract(path: Path, population: Population) -> None:
    acct, msisdn = population.customers, population.subscribers

    def row(legacy_id: str, event: str, line: int, service: str, hour: int, units: int,
            cents: int, currency: str = "EUR") -> str:
        return (f"{legacy_id},{event},{acct[line]},{msisdn[line]},{service},"
                f"{at(hour, 1).isoformat()},{units},{cents},{currency}")

    lines = [
        "legacy_record_id,event_id,account_id,subscriber,service,event_time,units,"
        "amount_minor,currency",
        row("L1", str(IDS["A"]), 0, "data", 10, 1_048_576, 1235),
        row("L2", str(IDS["B"]), 0, "voice", 11, 60, 12),
        row("L3", str(IDS["C"]), 1, "sms", 12, 1, 10),  # one cent more
        row("L4", str(IDS["D"]), 1, "data", 13, 1_024, 0),
        row("L5", str(UNKNOWN), 2, "voice", 14, 120, 20),  # E under another event id
        row("L6", "", 2, "data", 16, 2_048, 100),  # G without event id…
        row("L7", "", 2, "data", 16, 2_048, 100),  # …twice
        row("L8", str(IDS["H"]), 0, "sms", 17, 2, 9),  # units differ
        row("L9", str(IDS["I"]), 1, "voice", 18, 60, 10, "USD"),  # currency differs
        row("L10", str(uuid.UUID(int=99)), 1, "data", 19, 4_096, 50),  # never rated
        row("L11", str(IDS["A"]), 0, "data", 10, 1_048_576, 1235),  # A again
    ]
    path.write_text("\n".join(lines) + "\n")


def write_totals(path: Path, population: Population) -> None:
    acct = population.customers
    path.write_text("\n".join([
        "day,account_id,currency,record_count,amount_minor",  # any column order
        f"2026-11-20,{acct[0]},EUR,3,1256",  # A 1235 + B 12 + H 9: agrees
        f"2026-11-20,{acct[1]},EUR,3,20",  # C 9 + D 0 + I 10 = 19 in Tollgate
        f"2026-11-20,{uuid.UUID(int=5)},EUR,1,50",  # an account Tollgate has no usage of
        f"2026-11-20,{acct[0]},EUR,3,1256",  # repeated
        f"2026-11-25,{acct[0]},EUR,1,1",  # outside the period: not compared
    ]) + "\n")  # acct[2]'s day is missing: E 20 + F 9 + G 100


async def seed_rules_case(pool: Pool, tenant: str, tmp_path: Path) -> tuple[Population, Path, Path]:
    population = await populate(pool, tenant, lines=3)
    await insert_rated(pool, tenant, population)
    records, totals = tmp_path / "records.csv", tmp_path / "totals.csv"
    write_extract(records, population)
    write_totals(totals, population)
    return population, records, totals


def summary(found: list[reconcile_repo.VarianceRow]) -> set[tuple[str, str, str]]:
    names = {str(v): k for k, v in IDS.items()}
    return {(v.kind, names.get(str(v.event_id), str(v.event_id)) if v.event_id
             else str(v.day), v.legacy_record_id or v.account_id or "") for v in found}


async def test_each_rule_of_the_feed(pool: Pool, tenant_name: str, tmp_path: Path) -> None:
    population, records, totals = await seed_rules_case(pool, tenant_name, tmp_path)
    acct = [str(c) for c in population.customers]
    result = await reconcile(pool, tenant_name, records, totals=totals)
    assert (result.period_start, result.period_end) == (DAY, NEXT_DAY)  # whole days, inferred
    assert (result.legacy_records, result.tollgate_records, result.matched) == (11, 9, 8)
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        found = await reconcile_repo.variances(conn, result.run_id)
    assert summary(found) == {
        ("AMOUNT_DIFFERS", "C", "L3"),
        ("EVENT_ID_DIFFERS", "E", "L5"),
        ("DUPLICATE_IN_LEGACY", "G", "L7"),
        ("ATTRIBUTE_DIFFERS", "H", "L8"),
        ("AMOUNT_DIFFERS", "I", "L9"),
        ("MISSING_IN_TOLLGATE", str(uuid.UUID(int=99)), "L10"),
        ("DUPLICATE_IN_LEGACY", "A", "L11"),
        ("MISSING_IN_LEGACY", "F", acct[2]),
        ("TOTAL_DIFFERS", "2026-11-20", acct[1]),
        ("TOTAL_MISSING_IN_TOLLGATE", "2026-11-20", str(uuid.UUID(int=5))),
        ("TOTAL_DUPLICATE_IN_LEGACY", "2026-11-20", acct[0]),
        ("TOTAL_MISSING_IN_LEGACY", "2026-11-20", acct[2]),
    }
    by = {(v.kind, v.legacy_record_id or v.account_id): v for v in found}
    cent = by[("AMOUNT_DIFFERS", "L3")]
    assert (cent.legacy_amount_micros, cent.tollgate_amount_micros,
            cent.difference_micros) == (100_000, 90_000, 10_000)
    assert by[("AMOUNT_DIFFERS", "L9")].detail == "currency USD vs EUR"
    assert by[("ATTRIBUTE_DIFFERS", "L8")].detail == "units 2 vs 1"
    assert by[("EVENT_ID_DIFFERS", "L5")].detail == f"legacy event id {UNKNOWN}"
    assert by[("TOTAL_DIFFERS", acct[1])].detail == "amount 20 vs 19 in the extract's unit"
    assert by[("TOTAL_DIFFERS", acct[1])].difference_micros == 10_000
    assert by[("DUPLICATE_IN_LEGACY", "L11")].legacy_line == 12
    assert [v.variance_no for v in found] == list(range(1, len(found) + 1))


async def test_a_tolerance_absorbs_small_differences(pool: Pool, tenant_name: str,
                                                     tmp_path: Path) -> None:
    _, records, totals = await seed_rules_case(pool, tenant_name, tmp_path)
    one_cent = await reconcile(pool, tenant_name, records, totals=totals,
                               tolerance=Tolerance(micros=10_000))
    assert "TOTAL_DIFFERS" not in one_cent.by_kind
    assert one_cent.by_kind["AMOUNT_DIFFERS"] == 1  # the currency difference stays
    # 10,000 micro-units are 11.1 % of C's 90,000: 111,112 ppm tolerate it, 111,110 do not
    assert (await reconcile(pool, tenant_name, records,
                            tolerance=Tolerance(ppm=111_112))).by_kind["AMOUNT_DIFFERS"] == 1
    assert (await reconcile(pool, tenant_name, records,
                            tolerance=Tolerance(ppm=111_110))).by_kind["AMOUNT_DIFFERS"] == 2


async def test_variances_are_announced_on_nats(pool: Pool, js: JetStreamContext,
                                               tenant_name: str, tmp_path: Path) -> None:
    _, records, _ = await seed_rules_case(pool, tenant_name, tmp_path)
    variances = await js.subscribe(f"tg.{tenant_name}.evt.assurance.variance", stream="EVENTS")
    summaries = await js.subscribe(f"tg.{tenant_name}.evt.assurance.reconciled",
                                   stream="EVENTS")
    result = await reconcile(pool, tenant_name, records)
    while await relay_once(pool, js, tenant_name):
        pass
    received = []
    for _ in range(result.variances):
        msg = await variances.next_msg(timeout=10)
        envelope = json.loads(msg.data)
        assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == envelope["id"]
        assert envelope["type"] == "dev.tollgate.assurance.variance.v1"
        assert envelope["tenant"] == tenant_name
        received.append(envelope["data"])
        await msg.ack()
    assert sorted(d["varianceNo"] for d in received) == list(range(1, result.variances + 1))
    assert {d["runId"] for d in received} == {str(result.run_id)}
    missing = next(d for d in received if d["kind"] == "MISSING_IN_LEGACY")
    assert (missing["eventId"], missing["tollgateAmountMicros"]) == (str(IDS["F"]), 90_000)
    summary_msg = json.loads((await summaries.next_msg(timeout=10)).data)["data"]
    assert summary_msg["variances"] == result.by_kind and summary_msg["matched"] == 8
    await variances.unsubscribe()
    await summaries.unsubscribe()


async def test_a_malformed_extract_is_refused_and_leaves_nothing(
        pool: Pool, tenant_name: str, tmp_path: Path) -> None:
    population, records, _ = await seed_rules_case(pool, tenant_name, tmp_path)
    text = records.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*text[:3], text[3].replace(",1,", ",one,"), *text[4:]]) + "\n")
    with pytest.raises(FeedError, match="line 4"):
        await reconcile(pool, tenant_name, bad)
    no_amount = tmp_path / "no-amount.csv"
    no_amount.write_text(text[0].replace(",amount_minor", "") + "\n")
    with pytest.raises(FeedError, match="amount_micros, amount_minor"):
        await reconcile(pool, tenant_name, no_amount)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n".join([text[0], text[1].replace(str(population.subscribers[0]), "")])
                     + "\n")
    with pytest.raises(FeedError, match="line 2 lacks a required value"):
        await reconcile(pool, tenant_name, blank)
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM reconciliation_runs") == 0
        assert await conn.fetchval("SELECT count(*) FROM outbox"
                                   " WHERE subject LIKE '%assurance%'") == 0


async def test_runs_are_confined_to_their_tenant(pool: Pool, tenant_name: str,
                                                 tmp_path: Path) -> None:
    _, records, _ = await seed_rules_case(pool, tenant_name, tmp_path)
    other = tenant_name + "b"
    await populate(pool, other, lines=1)
    mine = await reconcile(pool, tenant_name, records)
    theirs = await reconcile(pool, other, records)  # nothing of tenant_name's is visible there
    assert theirs.tollgate_records == 0 and theirs.matched == 0
    assert theirs.by_kind == {"MISSING_IN_TOLLGATE": 10, "DUPLICATE_IN_LEGACY": 1}  # L11
    async with tenant_tx(pool, other, readonly=True) as conn:
        assert await reconcile_repo.get_run(conn, mine.run_id) is None
        assert await reconcile_repo.variances(conn, mine.run_id) == []
