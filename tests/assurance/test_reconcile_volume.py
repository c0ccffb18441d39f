"""The required reconciliation test: 100k rated records, a legacy extract with 1 % missing, 1 %
duplicated and 1 % off-by-one-unit records plus legacy-only extras → every injected discrepancy
is found (recall 100 %) and nothing else is reported (precision 100 %)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tests.assurance.helpers import copy_rated_usage, populate
from tollgate_core.assurance.legacy_feed import AmountUnit
from tollgate_core.assurance.legacy_gen import FaultRates, InjectedFault, generate, read_faults
from tollgate_core.assurance.reconcile import VarianceKind, reconcile
from tollgate_core.store import reconcile_repo
from tollgate_core.store.db import Pool, tenant_tx

BERLIN = ZoneInfo("Europe/Berlin")  # the example tenant's time zone
START = datetime(2026, 11, 20, tzinfo=BERLIN)
PERIOD = timedelta(days=2)
RECORDS = 100_000


def found_key(v: reconcile_repo.VarianceRow) -> tuple[str, ...]:
    if v.kind.startswith("TOTAL_"):
        return (v.kind, v.account_id or "", v.day.isoformat() if v.day else "")
    return (v.kind, str(v.event_id) if v.event_id else "", v.legacy_record_id or "")


def injected_key(f: InjectedFault) -> tuple[str, ...]:
    if f.kind.startswith("TOTAL_"):
        return (f.kind.value, f.account_id or "", f.day.isoformat() if f.day else "")
    return (f.kind.value, f.event_id or "", f.legacy_record_id or "")


async def test_every_injected_discrepancy_is_found_and_nothing_else(
        pool: Pool, tenant_name: str, tmp_path: Path) -> None:
    population = await populate(pool, tenant_name, lines=2_000)
    await copy_rated_usage(pool, tenant_name, population, RECORDS, START, PERIOD, seed=11)
    # a record just outside the period must neither be expected nor reported
    await copy_rated_usage(pool, tenant_name, population, 50, START + PERIOD, PERIOD, seed=12)

    rates = FaultRates(missing=0.01, duplicate=0.01, off_by_one=0.01, extra=0.002,
                       no_event_id=0.05)
    files = await generate(pool, tenant_name, tmp_path, since=START, until=START + PERIOD,
                           unit=AmountUnit.MICRO, rates=rates, seed=2026)
    injected = read_faults(files.faults)
    by_kind = Counter(f.kind for f in injected)
    assert by_kind[VarianceKind.MISSING_IN_LEGACY] == 1_000
    assert by_kind[VarianceKind.DUPLICATE_IN_LEGACY] == 1_000
    assert by_kind[VarianceKind.AMOUNT_DIFFERS] == 1_000
    assert by_kind[VarianceKind.MISSING_IN_TOLLGATE] == 200
    assert by_kind[VarianceKind.TOTAL_DIFFERS] > 2_000  # account-days touched by the faults
    assert files.record_count == RECORDS - 1_000 + 1_000 + 200

    result = await reconcile(pool, tenant_name, files.records, totals=files.totals,
                             since=START, until=START + PERIOD)
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        found = await reconcile_repo.variances(conn, result.run_id)

    reported = {found_key(v) for v in found}
    expected = {injected_key(f) for f in injected}
    assert len(reported) == len(found), "a variance was reported twice"
    missed, spurious = expected - reported, reported - expected
    recall = 1 - len(missed) / len(expected)
    precision = 1 - len(spurious) / len(reported)
    assert not missed, f"recall {recall:.4%}; missed e.g. {sorted(missed)[:5]}"
    assert not spurious, f"precision {precision:.4%}; spurious e.g. {sorted(spurious)[:5]}"
    assert result.legacy_records == files.record_count
    assert result.tollgate_records == RECORDS
    assert result.matched == RECORDS - 1_000
    assert result.by_kind == {k.value: n for k, n in Counter(f.kind for f in injected).items()}
    # off-by-one in micro-units: exactly one micro-unit either way
    assert {v.difference_micros for v in found if v.kind == "AMOUNT_DIFFERS"} == {-1, 1}
    # records without an event id were matched by subscriber, service, time and units
    with files.records.open() as handle:
        without_id = sum(1 for line in handle if line.split(",")[1] == "")
    assert without_id > 4_000
