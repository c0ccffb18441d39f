"""`tollgate assurance sync`: the scheduled exchange with a legacy BSS through a shared folder
(the Tenant's `legacy.extractsClaim`, mounted at /legacy by the operator's CronJob).

    inbox/           extracts the legacy system drops (docs/legacy-feed.md)
    inbox/done/      extracts reconciled (or already reconciled before: same SHA-256)
    inbox/failed/    extracts refused, each with `<name>.reason.txt`
    outbox/          what Tollgate mirrors: numbered batches of rated records, account-day
                     totals and documents, and last a manifest per batch
    reports/         one JSON report per extract

Mirror: the rated records and documents written since the last batch, up to a watermark no
writer can still commit below, become batch n: recorded in the database *before* its files
are written, so a run that dies in between writes the same files again (same names, same
bytes) instead of a batch that would repeat records the legacy side already took. Files are
written to a hidden temporary name, flushed and renamed. Reconcile: every extract in inbox/
whose SHA-256 has no reconciliation run yet is reconciled (one transaction: run, variances,
events through the outbox); then its report is written and it is moved to done/. A run that
dies after the commit finds the run by the SHA-256 next time and finishes the report and the
move. An extract the format refuses goes to failed/ with the reason; the others carry on.
One sync per tenant at a time (a session advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO, cast
from zoneinfo import ZoneInfo

import structlog

from tollgate_core.assurance.legacy_feed import (
    AmountUnit,
    FeedError,
    LegacyDocument,
    LegacyRecord,
    LegacyTotal,
    document_row,
    documents_header,
    record_row,
    records_header,
    to_unit,
    total_row,
    totals_header,
)
from tollgate_core.assurance.reconcile import Tolerance, reconcile
from tollgate_core.store import catalog_repo, legacy_repo, reconcile_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx

log = structlog.get_logger(__name__)

REPORT_VARIANCES_MAX = 10_000
"""Variances listed in a report; all of them are stored and visible in GraphQL either way."""
RECORDS_SUFFIX = "-records.csv"
TOTALS_SUFFIX = "-totals.csv"
REASON_SUFFIX = ".reason.txt"
HELD_BACK_WARNING = timedelta(minutes=15)
"""A transaction still writing after this long holds the mirror back: worth a warning."""


class SyncBusy(RuntimeError):
    """Another sync of the same tenant holds the lock."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The folders of the shared volume."""

    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def done(self) -> Path:
        return self.inbox / "done"

    @property
    def failed(self) -> Path:
        return self.inbox / "failed"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def ensure(self) -> None:
        for folder in (self.done, self.failed, self.outbox, self.reports):
            folder.mkdir(parents=True, exist_ok=True)


# --------------------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    """Write `path` all or nothing: a hidden temporary file in the same folder, flushed to
    disk, then renamed over `path` (readers see the old file or the whole new one)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
        _fsync_dir(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: Path, document: object) -> None:
    with atomic_file(path) as handle:
        json.dump(document, handle, indent=2, default=_json_value)
        handle.write("\n")


def _json_value(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _move(source: Path, folder: Path, sha256: str) -> Path:
    """Move into `folder`, keeping the name unless another file already has it there."""
    target = folder / source.name
    if target.exists():
        target = folder / f"{source.stem}-{sha256[:12]}{source.suffix}"
    source.replace(target)
    return target


# --------------------------------------------------------------------------- mirror


@dataclass(frozen=True, slots=True)
class MirrorResult:
    batch_no: int | None
    """None: nothing was written since the last batch."""
    records: int = 0
    totals: int = 0
    documents: int = 0
    files: tuple[Path, ...] = ()
    resumed: bool = False
    """The batch had been recorded by a run that did not finish writing it."""


Progress = Callable[[int, int], None]


def batch_stem(tenant: str, batch_no: int) -> str:
    return f"{tenant}-{batch_no:08d}"


async def mirror(pool: Pool, tenant: str, layout: Layout, *, unit: AmountUnit,
                 settle_s: float = 60.0, progress: Progress | None = None) -> MirrorResult:
    """Write the next mirror batch into outbox/ (or finish the one a dead run left)."""
    async with tenant_tx(pool, tenant) as conn:
        mark = await legacy_repo.watermark(conn, settle_s)  # first: pg_stat_activity is cached
        upto = mark.until
        if mark.oldest_writer is not None and upto < datetime.now(UTC) - HELD_BACK_WARNING:
            log.warning("legacy mirror held back by a transaction open for long", tenant=tenant,
                        since=mark.oldest_writer.isoformat(), pid=mark.oldest_pid)
        spec = await catalog_repo.get_tenant(conn, tenant)
        if spec is None:
            raise FeedError(f"tenant {tenant!r} does not exist")
        last = await legacy_repo.last_batch(conn)
        if last is not None and last.pending:
            batch, resumed = last, True
        else:
            after = last.to_time if last is not None else None
            if (after is not None and upto <= after) or not await legacy_repo.has_rows(
                    conn, tenant, after, upto):
                log.info("legacy mirror: nothing new", tenant=tenant,
                         since=after.isoformat() if after else None, until=upto.isoformat())
                return MirrorResult(None)
            batch = await legacy_repo.create_batch(
                conn, tenant, (last.batch_no if last else 0) + 1, after, upto, unit.value)
            resumed = False
    result = await _write_batch(pool, tenant, layout, batch, ZoneInfo(spec.timezone), progress)
    async with tenant_tx(pool, tenant) as conn:
        await legacy_repo.complete_batch(
            conn, batch.batch_no, result.records, result.documents,
            {path.name: await asyncio.to_thread(sha256_of, path) for path in result.files})
    log.info("legacy mirror batch written", tenant=tenant, batch=batch.batch_no,
             resumed=resumed, records=result.records, totals=result.totals,
             documents=result.documents, files=[p.name for p in result.files],
             since=batch.from_time.isoformat() if batch.from_time else None,
             until=batch.to_time.isoformat())
    return MirrorResult(batch.batch_no, result.records, result.totals, result.documents,
                        result.files, resumed)


async def _write_batch(pool: Pool, tenant: str, layout: Layout, batch: legacy_repo.MirrorBatch,
                       tz: ZoneInfo, progress: Progress | None) -> MirrorResult:
    """The batch's files, from one snapshot; the same batch always gives the same bytes."""
    unit = AmountUnit(batch.amount_unit)
    stem = batch_stem(tenant, batch.batch_no)
    paths = [layout.outbox / f"{stem}{suffix}" for suffix in (
        RECORDS_SUFFIX, TOTALS_SUFFIX, "-documents.csv", "-manifest.json")]
    sums: dict[tuple[str, date, str], list[int]] = {}
    async with tenant_tx(pool, tenant, isolation="repeatable_read", readonly=True) as conn:
        total = await legacy_repo.count_records(conn, tenant, batch.from_time, batch.to_time)
        records = 0
        with atomic_file(paths[0]) as handle:
            out = csv.writer(handle, lineterminator="\n")
            out.writerow(records_header(unit))
            async for r in legacy_repo.records(conn, tenant, batch.from_time, batch.to_time):
                amount = to_unit(r.amount_micros, unit, r.currency)
                event_time = r.start_time.astimezone(tz)
                out.writerow(record_row(LegacyRecord(
                    str(r.event_id), str(r.event_id), r.account_id, r.subscriber or "",
                    r.service, event_time, r.quantity, amount, r.currency)))
                entry = sums.setdefault((r.account_id, event_time.date(), r.currency), [0, 0])
                entry[0] += 1
                entry[1] += amount
                records += 1
                if progress is not None and records % 1_000 == 0:
                    progress(records, total)
        if progress is not None:
            progress(records, total)
        docs = await legacy_repo.documents(conn, tenant, batch.from_time, batch.to_time)
    totals = [LegacyTotal(account, day, currency, n, amount)
              for (account, day, currency), (n, amount) in sorted(
                  sums.items(), key=lambda item: (item[0][1], item[0][0], item[0][2]))]
    with atomic_file(paths[1]) as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(totals_header(unit))
        out.writerows(total_row(t) for t in totals)
    with atomic_file(paths[2]) as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(documents_header(unit))
        out.writerows(document_row(LegacyDocument(
            str(d.invoice_id), d.kind, d.bill_no, d.account_id, d.bill_date, d.period_start,
            d.period_end, d.due_date, d.currency, to_unit(d.net_micros, unit, d.currency),
            to_unit(d.tax_micros, unit, d.currency), to_unit(d.total_micros, unit, d.currency)))
            for d in docs)
    lines = {paths[0].name: records, paths[1].name: len(totals), paths[2].name: len(docs)}
    write_json(paths[3], {
        "tenant": tenant, "batch": batch.batch_no,
        "writtenAfter": batch.from_time, "writtenUntil": batch.to_time,
        "amountUnit": unit.value,
        "files": [{"name": p.name, "records": lines[p.name], "sha256": sha256_of(p)}
                  for p in paths[:3]],
    })
    return MirrorResult(batch.batch_no, records, len(totals), len(docs), tuple(paths))


# --------------------------------------------------------------------------- reconcile


class ExtractStatus(StrEnum):
    RECONCILED = "reconciled"
    ALREADY_RECONCILED = "alreadyReconciled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ExtractOutcome:
    source: str
    sha256: str
    status: ExtractStatus
    report: Path
    moved_to: Path
    run_id: uuid.UUID | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def variances(self) -> int:
        return sum(self.by_kind.values())


def totals_for(records: Path) -> Path:
    """`X-records.csv` and `X.csv` pair with `X-totals.csv`."""
    stem = records.name.removesuffix(RECORDS_SUFFIX).removesuffix(".csv")
    return records.with_name(f"{stem}{TOTALS_SUFFIX}")


def pending_extracts(layout: Layout) -> list[Path]:
    """Records files in inbox/, in name order: `*.csv` but not totals files, and not hidden
    (a gateway uploading under a temporary name — `.x.csv`, `x.csv.part` — is not done)."""
    return sorted(p for p in layout.inbox.iterdir()
                  if p.is_file() and p.suffix == ".csv" and not p.name.startswith(".")
                  and not p.name.endswith(TOTALS_SUFFIX))


# What the format of a file, not the system, is to blame for: the file goes to failed/.
EXTRACT_ERRORS = (FeedError, UnicodeDecodeError, csv.Error)


async def reconcile_inbox(pool: Pool, tenant: str, layout: Layout, *,
                          tolerance: Tolerance | None = None,
                          progress: Callable[[int, int, str], None] | None = None
                          ) -> list[ExtractOutcome]:
    extracts = await asyncio.to_thread(pending_extracts, layout)
    outcomes = []
    for done, records in enumerate(extracts):
        if progress is not None:
            progress(done, len(extracts), records.name)
        outcomes.append(await reconcile_extract(pool, tenant, layout, records,
                                                tolerance or Tolerance()))
    if progress is not None and extracts:
        progress(len(extracts), len(extracts), "")
    return outcomes


async def reconcile_extract(pool: Pool, tenant: str, layout: Layout, records: Path,
                            tolerance: Tolerance) -> ExtractOutcome:
    totals: Path | None = totals_for(records)
    if not await asyncio.to_thread(totals_for(records).is_file):
        totals = None
    sha256 = await asyncio.to_thread(sha256_of, records)
    report = layout.reports / f"{records.stem}-{sha256[:12]}.json"
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        run_id = await legacy_repo.run_of_extract(conn, sha256)
    status = ExtractStatus.ALREADY_RECONCILED
    if run_id is None:
        try:
            result = await reconcile(pool, tenant, records, totals=totals, tolerance=tolerance)
        except EXTRACT_ERRORS as exc:
            return await asyncio.to_thread(_refuse, tenant, layout, records, totals, sha256,
                                           report, str(exc))
        run_id, status = result.run_id, ExtractStatus.RECONCILED
    document = await run_report(pool, tenant, run_id)  # rebuilt from the run if it was lost
    await asyncio.to_thread(write_json, report, document)
    moved = await asyncio.to_thread(_move, records, layout.done, sha256)
    if totals is not None:
        await asyncio.to_thread(_move, totals, layout.done, sha256)
    by_kind = cast("dict[str, int]", document["byKind"])
    log.info("legacy extract reconciled" if status is ExtractStatus.RECONCILED
             else "legacy extract reconciled before; moved to done", tenant=tenant,
             source=records.name, totals=totals.name if totals else None, sha256=sha256,
             run_id=str(run_id), variances=sum(by_kind.values()), by_kind=by_kind,
             report=report.name)
    return ExtractOutcome(records.name, sha256, status, report, moved, run_id, by_kind)


def _refuse(tenant: str, layout: Layout, records: Path, totals: Path | None, sha256: str,
            report: Path, reason: str) -> ExtractOutcome:
    moved = _move(records, layout.failed, sha256)
    if totals is not None:
        _move(totals, layout.failed, sha256)
    with atomic_file(moved.with_name(moved.name + REASON_SUFFIX)) as handle:
        handle.write(reason + "\n")
    write_json(report, {"tenant": tenant, "status": ExtractStatus.FAILED.value,
                        "source": records.name, "sha256": sha256,
                        "totalsSource": totals.name if totals else None, "error": reason})
    log.error("legacy extract refused", tenant=tenant, source=records.name, sha256=sha256,
              reason=reason, moved_to=str(moved.relative_to(layout.root)))
    return ExtractOutcome(records.name, sha256, ExtractStatus.FAILED, report, moved,
                          error=reason)


async def run_report(pool: Pool, tenant: str, run_id: uuid.UUID,
                     limit: int = REPORT_VARIANCES_MAX) -> dict[str, Any]:
    """A reconciliation run as a JSON document, from what the database holds."""
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        run = await legacy_repo.run_summary(conn, run_id)
        assert run is not None
        by_kind = await reconcile_repo.variance_counts(conn, run_id)
        listed = await reconcile_repo.variances(conn, run_id, limit=limit)
    variances = [{k: v for k, v in row.as_event_data(run_id).items() if k != "runId"}
                 for row in listed]
    return {
        "tenant": tenant, "status": ExtractStatus.RECONCILED.value,
        "runId": run_id, "source": run["source"], "sha256": run["source_sha256"],
        "totalsSource": run["totals_source"], "periodStart": run["period_start"],
        "periodEnd": run["period_end"], "amountUnit": run["amount_unit"],
        "tolerance": {"micros": run["tolerance_micros"], "ppm": run["tolerance_ppm"]},
        "legacyRecords": run["legacy_records"], "tollgateRecords": run["tollgate_records"],
        "matched": run["matched"], "varianceCount": run["variances"], "byKind": by_kind,
        "variances": variances, "variancesTruncated": len(variances) < run["variances"],
        "reconciledAt": run["finished_at"],
    }


# --------------------------------------------------------------------------- the sync


@dataclass(frozen=True, slots=True)
class SyncResult:
    mirrored: list[MirrorResult]
    """The batches written: none, one, or a batch a dead run left and then the next one."""
    extracts: list[ExtractOutcome]

    @property
    def failed(self) -> list[ExtractOutcome]:
        return [e for e in self.extracts if e.status is ExtractStatus.FAILED]


async def sync(pool: Pool, tenant: str, root: Path, *, reconcile_extracts: bool,
               unit: AmountUnit = AmountUnit.MICRO, tolerance: Tolerance | None = None,
               settle_s: float = 60.0, mirror_progress: Progress | None = None,
               extract_progress: Callable[[int, int, str], None] | None = None,
               on_done: Callable[[], Awaitable[None]] | None = None) -> SyncResult:
    """Mirror, then (with `reconcile_extracts`) reconcile the inbox; one sync per tenant."""
    layout = Layout(root)
    await asyncio.to_thread(layout.ensure)
    async with pool.acquire() as lock_conn:
        conn = cast("Connection", lock_conn)
        if not await legacy_repo.try_sync_lock(conn, tenant):
            raise SyncBusy(f"another sync of tenant {tenant!r} is running")
        try:
            mirrored: list[MirrorResult] = []
            while not mirrored or mirrored[-1].resumed:
                batch = await mirror(pool, tenant, layout, unit=unit, settle_s=settle_s,
                                     progress=mirror_progress)
                if batch.batch_no is None:
                    break
                mirrored.append(batch)
            extracts = await reconcile_inbox(pool, tenant, layout, tolerance=tolerance,
                                             progress=extract_progress) \
                if reconcile_extracts else []
            if on_done is not None:
                await on_done()
        finally:
            await legacy_repo.release_sync_lock(conn, tenant)
    return SyncResult(mirrored, extracts)
