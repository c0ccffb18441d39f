"""`tollgate assurance reconcile`: match a legacy BSS's extract to Tollgate's rated usage, store
the variances, and announce them (`evt.assurance.variance`, `evt.assurance.reconciled`)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from tollgate_core.assurance.legacy_feed import (
    RECORD_COLUMNS,
    TOTAL_COLUMNS,
    AmountUnit,
    FeedError,
    micros_per_unit,
    read_header,
)
from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.money import MoneyError
from tollgate_core.store import catalog_repo, outbox, reconcile_repo
from tollgate_core.store.db import Pool, tenant_tx

EVENTS_PER_RUN_MAX = 10_000
"""Variance events per run; beyond this the run's summary event says so (all variances are
stored and visible in GraphQL either way)."""

_VARIANCE_NAMESPACE = uuid.UUID("0d6f1c9e-52a4-4b8e-9a51-3c0b7f7e2d11")


class VarianceKind(StrEnum):
    MISSING_IN_LEGACY = "MISSING_IN_LEGACY"
    MISSING_IN_TOLLGATE = "MISSING_IN_TOLLGATE"
    DUPLICATE_IN_LEGACY = "DUPLICATE_IN_LEGACY"
    AMOUNT_DIFFERS = "AMOUNT_DIFFERS"
    ATTRIBUTE_DIFFERS = "ATTRIBUTE_DIFFERS"
    EVENT_ID_DIFFERS = "EVENT_ID_DIFFERS"
    TOTAL_MISSING_IN_LEGACY = "TOTAL_MISSING_IN_LEGACY"
    TOTAL_MISSING_IN_TOLLGATE = "TOTAL_MISSING_IN_TOLLGATE"
    TOTAL_DUPLICATE_IN_LEGACY = "TOTAL_DUPLICATE_IN_LEGACY"
    TOTAL_DIFFERS = "TOTAL_DIFFERS"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """An amount differs when |difference| exceeds both bounds; integers, never floats."""

    micros: int = 0
    ppm: int = 0  # parts per million of Tollgate's amount

    def __post_init__(self) -> None:
        if self.micros < 0 or self.ppm < 0:
            raise ValueError("tolerances are not negative")


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    run_id: uuid.UUID
    period_start: datetime
    period_end: datetime
    amount_unit: AmountUnit
    legacy_records: int
    tollgate_records: int
    matched: int
    by_kind: dict[str, int] = field(default_factory=dict)
    events: int = 0

    @property
    def variances(self) -> int:
        return sum(self.by_kind.values())


def whole_days(first: datetime, last: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The tenant's calendar days that contain `first` … `last`, as [start, end)."""
    start = datetime.combine(first.astimezone(tz).date(), time(), tz)
    end = datetime.combine(last.astimezone(tz).date() + timedelta(days=1), time(), tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def period_days(start: datetime, end: datetime, tz: ZoneInfo) -> tuple[date, date]:
    return start.astimezone(tz).date(), (end - timedelta(microseconds=1)).astimezone(tz).date()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def reconcile(pool: Pool, tenant: str, records: Path, *, totals: Path | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    tolerance: Tolerance = Tolerance(),
                    events_max: int = EVENTS_PER_RUN_MAX) -> ReconcileResult:
    """Import the extract, match, store the run and its variances, enqueue the events: one
    transaction, so a failed run leaves nothing behind."""
    header = await asyncio.to_thread(read_header, records, RECORD_COLUMNS)
    totals_header = await asyncio.to_thread(read_header, totals, TOTAL_COLUMNS) if totals \
        else None
    source_sha256 = await asyncio.to_thread(_sha256, records)
    if totals_header and totals_header.unit is not header.unit:
        raise FeedError("the records and totals files must use the same amount unit")
    if (since is None) != (until is None):
        raise FeedError("give both the start and the end of the period, or neither")
    started_at = datetime.now(UTC)
    run_id = uuid.uuid4()
    try:
        async with tenant_tx(pool, tenant) as conn:
            spec = await catalog_repo.get_tenant(conn, tenant)
            if spec is None:
                raise FeedError(f"tenant {tenant!r} does not exist")
            tz = ZoneInfo(spec.timezone)
            await reconcile_repo.create_staging(conn)
            await reconcile_repo.copy_records(conn, records, list(header.columns))
            line = await reconcile_repo.first_incomplete_line(
                conn, "legacy_stage", ["legacy_record_id", "subscriber", "service",
                                       "event_time", "units", "amount", "currency"])
            if line is not None:
                raise FeedError(f"{records.name}: line {line} lacks a required value")
            if totals and totals_header:
                await reconcile_repo.copy_totals(conn, totals, list(totals_header.columns))
                line = await reconcile_repo.first_incomplete_line(
                    conn, "legacy_totals_stage", ["account_id", "day", "currency",
                                                  "record_count", "amount"])
                if line is not None:
                    raise FeedError(f"{totals.name}: line {line} lacks a required value")
            first, last, currencies = await reconcile_repo.legacy_span(conn)
            if since is None or until is None:
                if first is None or last is None:
                    raise FeedError(f"{records.name}: no records, so no period; give one")
                since, until = whole_days(first, last, tz)
            if until <= since:
                raise FeedError("the period ends before it starts")
            try:
                factors = {c: micros_per_unit(header.unit, c)
                           for c in {*currencies, spec.currency}}
            except MoneyError as exc:
                raise FeedError(f"{records.name}: {exc}") from exc
            await reconcile_repo.set_unit_factors(conn, factors)
            counts = await reconcile_repo.match(
                conn, tenant, since, until, spec.timezone, tolerance.micros, tolerance.ppm,
                period_days(since, until, tz) if totals else None)
            run = reconcile_repo.RunRow(
                run_id, records.name, source_sha256, totals.name if totals else None, since,
                until, header.unit.value, tolerance.micros, tolerance.ppm,
                counts.legacy_records, counts.tollgate_records, counts.matched,
                counts.variances, started_at)
            await reconcile_repo.save_run(conn, tenant, run)
            found = await reconcile_repo.variances(conn, run_id, limit=events_max)
            await outbox.enqueue(conn, [
                DomainEvent.new(tenant, "assurance.variance", v.as_event_data(run_id),
                                uuid.uuid5(_VARIANCE_NAMESPACE, f"{run_id}/{v.variance_no}"))
                for v in found])
            await outbox.enqueue(conn, [DomainEvent.new(tenant, "assurance.reconciled", {
                "runId": str(run_id), "source": records.name,
                "periodStart": since.isoformat(), "periodEnd": until.isoformat(),
                "legacyRecords": counts.legacy_records,
                "tollgateRecords": counts.tollgate_records, "matched": counts.matched,
                "variances": counts.by_kind, "varianceEvents": len(found)})])
    except asyncpg.DataError as exc:  # a value COPY could not read: PostgreSQL names the line
        raise FeedError(f"{exc} ({getattr(exc, 'context', '') or records.name})") from exc
    return ReconcileResult(run_id, since, until, header.unit, counts.legacy_records,
                           counts.tollgate_records, counts.matched, counts.by_kind, len(found))
