"""The extract generator and the feed format, without a database."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tollgate_core.assurance.legacy_feed import (
    RECORD_COLUMNS,
    AmountUnit,
    FeedError,
    read_header,
    to_unit,
    write_records,
)
from tollgate_core.assurance.legacy_gen import FaultRates, TollgateRecord, build_extract
from tollgate_core.assurance.reconcile import VarianceKind

TZ = ZoneInfo("Europe/Berlin")
START = datetime(2026, 11, 20, tzinfo=TZ)
PERIOD = (START, START + timedelta(days=1))


def records(n: int) -> list[TollgateRecord]:
    return [TollgateRecord(uuid.UUID(int=i + 1), f"acct-{i % 7}", f"4917{i % 7:08d}", "data",
                           START + timedelta(seconds=i * 7), 1_024 * (i + 1), 12_345 * i, "EUR")
            for i in range(n)]


def test_the_same_seed_gives_the_same_extract() -> None:
    rates = FaultRates(0.05, 0.05, 0.05, 0.02, 0.1)
    first = build_extract(records(400), period=PERIOD, tz=TZ, unit=AmountUnit.MINOR,
                          rates=rates, seed=9)
    again = build_extract(records(400)[::-1], period=PERIOD, tz=TZ, unit=AmountUnit.MINOR,
                          rates=rates, seed=9)
    other = build_extract(records(400), period=PERIOD, tz=TZ, unit=AmountUnit.MINOR,
                          rates=rates, seed=10)
    assert first == again
    assert first.faults != other.faults


def test_faults_are_exact_disjoint_and_placed_like_a_legacy_system_would() -> None:
    tollgate = records(1_000)
    extract = build_extract(tollgate, period=PERIOD, tz=TZ, unit=AmountUnit.MINOR,
                            rates=FaultRates(0.03, 0.02, 0.01, 0.005, 0.0), seed=1)
    kinds = Counter(f.kind for f in extract.faults if not f.kind.startswith("TOTAL_"))
    assert kinds == {VarianceKind.MISSING_IN_LEGACY: 30, VarianceKind.DUPLICATE_IN_LEGACY: 20,
                     VarianceKind.AMOUNT_DIFFERS: 10, VarianceKind.MISSING_IN_TOLLGATE: 5}
    by_kind: dict[VarianceKind, set[str | None]] = {}
    for f in extract.faults:
        by_kind.setdefault(f.kind, set()).add(f.event_id)
    record_kinds = (VarianceKind.MISSING_IN_LEGACY, VarianceKind.DUPLICATE_IN_LEGACY,
                    VarianceKind.AMOUNT_DIFFERS)
    for a in record_kinds:
        for b in record_kinds:
            assert a == b or not by_kind[a] & by_kind[b]
    ids = [r.legacy_record_id for r in extract.records]
    assert len(set(ids)) == len(ids) == 1_000 - 30 + 20 + 5
    times = [r.event_time for r in extract.records]
    assert times == sorted(times)
    position = {r.legacy_record_id: i for i, r in enumerate(extract.records)}
    for fault in extract.faults:
        if fault.kind is VarianceKind.DUPLICATE_IN_LEGACY:
            assert fault.legacy_record_id is not None
            copy = extract.records[position[fault.legacy_record_id]]
            original = extract.records[position[fault.legacy_record_id] - 1]
            assert (original.event_id, original.amount) == (copy.event_id, copy.amount)
    amounts = {r.event_id: r.amount for r in extract.records}
    for r in tollgate:
        if str(r.event_id) in by_kind[VarianceKind.AMOUNT_DIFFERS]:
            assert abs(amounts[str(r.event_id)] - to_unit(r.amount_micros, AmountUnit.MINOR,
                                                          "EUR")) == 1
    assert sum(t.record_count for t in extract.totals) == len(extract.records)


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError, match="at most 1"):
        FaultRates(0.5, 0.4, 0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultRates(extra=-0.1)


def test_headers_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_records(path, [], AmountUnit.MICRO)
    header = read_header(path, RECORD_COLUMNS)
    assert header.unit is AmountUnit.MICRO and "amount" in header.columns
    path.write_text("legacy_record_id,event_id,account_id,subscriber,service,event_time,units,"
                    "currency,amount_minor,amount_micros\n")
    with pytest.raises(FeedError, match="exactly one"):
        read_header(path, RECORD_COLUMNS)
    path.write_text("legacy_record_id,legacy_record_id,colour,amount_minor\n")
    with pytest.raises(FeedError, match=r"missing column\(s\) event_id.*unknown column\(s\) "
                                        r"colour; repeated column\(s\) legacy_record_id"):
        read_header(path, RECORD_COLUMNS)
    path.write_text("")
    with pytest.raises(FeedError, match="empty file"):
        read_header(path, RECORD_COLUMNS)
