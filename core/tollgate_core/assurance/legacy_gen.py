"""`tollgate assurance gen-legacy`: a realistic legacy extract made from Tollgate's own rated
records, with discrepancies injected at given rates and a seed, and the ground truth of what
was injected (what a correct reconciliation must report, no more, no less).

Injected, on disjoint records: missing on the legacy side, duplicated in the legacy extract
(the copy right after the original, under a new legacy record id), amount off by one unit of
the extract's amount column; plus legacy-only records Tollgate never rated. Independently of
faults, a share of legacy records can lack Tollgate's event id (matched by subscriber, service,
time and units instead). Totals per account and day are computed from the legacy records as
written; their ground truth is every account and day whose totals then differ from Tollgate's.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from tollgate_core.assurance.legacy_feed import (
    AmountUnit,
    LegacyRecord,
    LegacyTotal,
    to_unit,
    write_records,
    write_totals,
)
from tollgate_core.assurance.reconcile import VarianceKind
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Shares of Tollgate's records (extra: legacy-only records per Tollgate record)."""

    missing: float = 0.01
    duplicate: float = 0.01
    off_by_one: float = 0.01
    extra: float = 0.002
    no_event_id: float = 0.0

    def __post_init__(self) -> None:
        rates = (self.missing, self.duplicate, self.off_by_one, self.extra, self.no_event_id)
        if any(not 0 <= r <= 1 for r in rates):
            raise ValueError("rates are between 0 and 1")
        if self.missing + self.duplicate + self.off_by_one > 1:
            raise ValueError("missing, duplicate and off-by-one records are disjoint: their"
                             " rates add up to at most 1")


@dataclass(frozen=True, slots=True)
class TollgateRecord:
    event_id: uuid.UUID
    account_id: str
    subscriber: str
    service: str
    start_time: datetime
    quantity: int
    amount_micros: int
    currency: str


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """One variance a correct reconciliation reports."""

    kind: VarianceKind
    event_id: str | None = None
    legacy_record_id: str | None = None
    account_id: str | None = None
    day: date | None = None


@dataclass(frozen=True, slots=True)
class LegacyExtract:
    records: list[LegacyRecord]
    totals: list[LegacyTotal]
    faults: list[InjectedFault]


def build_extract(tollgate: Sequence[TollgateRecord], *, period: tuple[datetime, datetime],
                  tz: ZoneInfo, unit: AmountUnit, rates: FaultRates,
                  seed: int) -> LegacyExtract:
    """Pure: the same records, period, rates and seed always give the same extract."""
    rng = random.Random(seed)  # noqa: S311  (test data, not secrets)
    ordered = sorted(tollgate, key=lambda r: (r.start_time, r.event_id))
    n = len(ordered)
    counts: list[int] = []
    for rate in (rates.missing, rates.duplicate, rates.off_by_one):
        counts.append(min(round(rate * n), n - sum(counts)))  # disjoint: never more than n
    chosen = rng.sample(range(n), sum(counts))
    missing = set(chosen[:counts[0]])
    duplicated = set(chosen[counts[0]:counts[0] + counts[1]])
    off_by_one = set(chosen[counts[0] + counts[1]:])
    pending: list[tuple[VarianceKind, str | None, LegacyRecord | None]] = []
    out: list[LegacyRecord] = []
    for i, r in enumerate(ordered):
        if i in missing:
            pending.append((VarianceKind.MISSING_IN_LEGACY, str(r.event_id), None))
            continue
        amount = to_unit(r.amount_micros, unit, r.currency)
        if i in off_by_one:
            amount += 1 if amount == 0 or rng.random() < 0.5 else -1
        record = LegacyRecord(
            "", "" if rng.random() < rates.no_event_id else str(r.event_id), r.account_id,
            r.subscriber, r.service, r.start_time.astimezone(tz), r.quantity, amount,
            r.currency)
        out.append(record)
        if i in off_by_one:
            pending.append((VarianceKind.AMOUNT_DIFFERS, str(r.event_id), record))
        if i in duplicated:
            copy = dataclasses.replace(record)
            out.append(copy)
            pending.append((VarianceKind.DUPLICATE_IN_LEGACY, str(r.event_id), copy))
    start, end = period
    span = (end - start) // timedelta(microseconds=1)
    for _ in range(round(rates.extra * n) if n else 0):
        template = ordered[rng.randrange(n)]
        event_id = "" if rng.random() < rates.no_event_id else str(
            uuid.UUID(int=rng.getrandbits(128), version=4))
        extra = LegacyRecord(
            "", event_id, template.account_id, template.subscriber, template.service,
            (start + timedelta(microseconds=rng.randrange(span))).astimezone(tz),
            rng.randrange(1, 1_000_000), to_unit(rng.randrange(0, 5_000_000), unit,
                                                 template.currency), template.currency)
        out.append(extra)
        pending.append((VarianceKind.MISSING_IN_TOLLGATE, event_id or None, extra))
    out.sort(key=lambda r: r.event_time)  # stable: a duplicate stays right after its original
    first_id = rng.randrange(10**8, 9 * 10**8)
    for k, record in enumerate(out):
        record.legacy_record_id = f"LGY{first_id + k:010d}"
    faults = [InjectedFault(kind, event_id, record.legacy_record_id if record else None)
              for kind, event_id, record in pending]
    totals = _legacy_totals(out, tz)
    faults += _totals_truth(ordered, totals, period, tz, unit)
    return LegacyExtract(out, totals, faults)


def _legacy_totals(records: Iterable[LegacyRecord], tz: ZoneInfo) -> list[LegacyTotal]:
    sums: dict[tuple[str, date, str], list[int]] = {}
    for r in records:
        key = (r.account_id, r.event_time.astimezone(tz).date(), r.currency)
        entry = sums.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += r.amount
    return [LegacyTotal(account, day, currency, n, amount)
            for (account, day, currency), (n, amount) in sorted(
                sums.items(), key=lambda item: (item[0][1], item[0][0]))]


def _totals_truth(tollgate: Iterable[TollgateRecord], legacy: Iterable[LegacyTotal],
                  period: tuple[datetime, datetime], tz: ZoneInfo,
                  unit: AmountUnit) -> list[InjectedFault]:
    """Account-days whose legacy totals differ from Tollgate's (same rounding as the legacy)."""
    ours: dict[tuple[str, date], tuple[int, int]] = {}
    for r in tollgate:
        if not period[0] <= r.start_time < period[1]:
            continue
        key = (r.account_id, r.start_time.astimezone(tz).date())
        n, amount = ours.get(key, (0, 0))
        ours[key] = (n + 1, amount + to_unit(r.amount_micros, unit, r.currency))
    theirs = {(t.account_id, t.day): (t.record_count, t.amount) for t in legacy}
    faults = []
    for key in sorted(ours.keys() | theirs.keys()):
        if key not in theirs:
            kind = VarianceKind.TOTAL_MISSING_IN_LEGACY
        elif key not in ours:
            kind = VarianceKind.TOTAL_MISSING_IN_TOLLGATE
        elif ours[key] != theirs[key]:
            kind = VarianceKind.TOTAL_DIFFERS
        else:
            continue
        faults.append(InjectedFault(kind, account_id=key[0], day=key[1]))
    return faults


FAULT_COLUMNS = ("kind", "event_id", "legacy_record_id", "account_id", "day")


def write_faults(path: Path, faults: Iterable[InjectedFault]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(FAULT_COLUMNS)
        for f in faults:
            out.writerow([f.kind.value, f.event_id or "", f.legacy_record_id or "",
                          f.account_id or "", f.day.isoformat() if f.day else ""])


def read_faults(path: Path) -> list[InjectedFault]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [InjectedFault(VarianceKind(row["kind"]), row["event_id"] or None,
                              row["legacy_record_id"] or None, row["account_id"] or None,
                              date.fromisoformat(row["day"]) if row["day"] else None)
                for row in csv.DictReader(handle)]


async def fetch_records(pool: Pool, tenant: str, since: datetime,
                        until: datetime) -> list[TollgateRecord]:
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        rows = await conn.fetch(
            "SELECT r.event_id, r.customer_id::text AS account_id, s.subscriber, r.service,"
            " r.start_time, r.quantity, r.amount_micros, rtrim(r.currency) AS currency"
            " FROM rated_usage r JOIN subscriptions s ON s.tenant_id = r.tenant_id"
            " AND s.subscription_id = r.subscription_id"
            " WHERE r.start_time >= $1 AND r.start_time < $2", since, until)
    return [TollgateRecord(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class GeneratedFiles:
    records: Path
    totals: Path
    faults: Path
    record_count: int
    total_count: int
    fault_count: int


async def generate(pool: Pool, tenant: str, out_dir: Path, *, since: datetime,
                   until: datetime, unit: AmountUnit = AmountUnit.MICRO,
                   rates: FaultRates = FaultRates(), seed: int = 0) -> GeneratedFiles:
    """Write legacy-records.csv, legacy-totals.csv and injected-faults.csv into `out_dir`."""
    if until <= since:
        raise ValueError("the period ends before it starts")
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
    if spec is None:
        raise ValueError(f"tenant {tenant!r} does not exist")
    tollgate = await fetch_records(pool, tenant, since, until)
    extract = build_extract(tollgate, period=(since, until), tz=ZoneInfo(spec.timezone),
                            unit=unit, rates=rates, seed=seed)
    return await asyncio.to_thread(write_extract, extract, out_dir, unit)


def write_extract(extract: LegacyExtract, out_dir: Path, unit: AmountUnit) -> GeneratedFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = (out_dir / "legacy-records.csv", out_dir / "legacy-totals.csv",
             out_dir / "injected-faults.csv")
    records = write_records(files[0], extract.records, unit)
    totals = write_totals(files[1], extract.totals, unit)
    write_faults(files[2], extract.faults)
    return GeneratedFiles(*files, records, totals, len(extract.faults))
