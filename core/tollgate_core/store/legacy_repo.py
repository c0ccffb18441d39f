"""Legacy integration in SQL: mirror batches (what was copied to the legacy system, by write
time) and "was this extract reconciled already?" (docs/adr/0017-legacy-integration.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from tollgate_core.store.db import Connection

SYNC_LOCK_CLASS = 0x7011_1E6A
"""First key of the session advisory lock that makes one sync per tenant run at a time (second
key: a hash of the tenant id)."""


async def try_sync_lock(conn: Connection, tenant: str) -> bool:
    """Take the tenant's sync lock on this connection (session level); False if held."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))",
                                    SYNC_LOCK_CLASS, tenant))


async def release_sync_lock(conn: Connection, tenant: str) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", SYNC_LOCK_CLASS, tenant)


@dataclass(frozen=True, slots=True)
class MirrorBatch:
    batch_no: int
    from_time: datetime | None
    """Exclusive; None for the first batch (everything written before `to_time`)."""
    to_time: datetime
    amount_unit: str
    written_at: datetime | None
    files: dict[str, str] | None

    @property
    def pending(self) -> bool:
        return self.written_at is None


_BATCH_COLUMNS = "batch_no, from_time, to_time, amount_unit, written_at, files"


async def last_batch(conn: Connection) -> MirrorBatch | None:
    row = await conn.fetchrow(f"SELECT {_BATCH_COLUMNS} FROM legacy_mirror_batches"
                              " ORDER BY batch_no DESC LIMIT 1")
    return None if row is None else MirrorBatch(**dict(row))


# The newest write time every writer is done with: a rated record or document is stamped with
# clock_timestamp() when written, never before its transaction began, so nothing can still
# commit at or below the start of the oldest transaction of this database that holds a
# transaction id (i.e. has written something) — all the tenant's writers run as the
# application role, whose sessions this role sees. `$1` seconds less again, for a commit in
# flight at this instant.
_WATERMARK = """
SELECT clock_timestamp() - make_interval(secs => $1) AS settled, a.xact_start, a.pid
FROM (SELECT 1) one LEFT JOIN LATERAL (
    SELECT xact_start, pid FROM pg_stat_activity
    WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
      AND backend_type = 'client backend' AND datname = current_database()
    ORDER BY xact_start LIMIT 1) a ON true
"""


@dataclass(frozen=True, slots=True)
class Watermark:
    until: datetime
    oldest_writer: datetime | None
    """Start of the oldest transaction still writing, when it holds the watermark back."""
    oldest_pid: int | None


async def watermark(conn: Connection, settle_s: float) -> Watermark:
    """Run this first in its transaction: pg_stat_activity is read once per transaction."""
    row = await conn.fetchrow(_WATERMARK, settle_s)
    assert row is not None
    settled, oldest = row["settled"], row["xact_start"]
    if oldest is not None and oldest < settled:
        return Watermark(oldest, oldest, row["pid"])
    return Watermark(settled, None, None)


_AFTER = "coalesce($2::timestamptz, '-infinity')"


async def has_rows(conn: Connection, tenant: str, after: datetime | None,
                   upto: datetime) -> bool:
    return bool(await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM rated_usage WHERE tenant_id = $1 AND rated_at > {_AFTER}"
        f" AND rated_at <= $3) OR EXISTS (SELECT 1 FROM invoices WHERE tenant_id = $1"
        f" AND billed_at > {_AFTER} AND billed_at <= $3)", tenant, after, upto))


async def create_batch(conn: Connection, tenant: str, batch_no: int, after: datetime | None,
                       upto: datetime, amount_unit: str) -> MirrorBatch:
    row = await conn.fetchrow(
        "INSERT INTO legacy_mirror_batches (tenant_id, batch_no, from_time, to_time,"
        f" amount_unit) VALUES ($1, $2, $3, $4, $5) RETURNING {_BATCH_COLUMNS}",
        tenant, batch_no, after, upto, amount_unit)
    assert row is not None
    return MirrorBatch(**dict(row))


async def complete_batch(conn: Connection, batch_no: int, records: int, invoices: int,
                         files: dict[str, str]) -> None:
    await conn.execute(
        "UPDATE legacy_mirror_batches SET records = $2, invoices = $3, files = $4,"
        " written_at = clock_timestamp() WHERE batch_no = $1 AND written_at IS NULL",
        batch_no, records, invoices, files)


async def count_records(conn: Connection, tenant: str, after: datetime | None,
                        upto: datetime) -> int:
    return int(await conn.fetchval(
        f"SELECT count(*) FROM rated_usage WHERE tenant_id = $1 AND rated_at > {_AFTER}"
        " AND rated_at <= $3", tenant, after, upto))


@dataclass(frozen=True, slots=True)
class MirroredRecord:
    event_id: uuid.UUID
    account_id: str
    subscriber: str | None
    service: str
    start_time: datetime
    quantity: int
    amount_micros: int
    currency: str


async def records(conn: Connection, tenant: str, after: datetime | None, upto: datetime,
                  prefetch: int = 2_000) -> AsyncIterator[MirroredRecord]:
    """The rated records written in (after, upto], in write order; needs a transaction."""
    cursor = conn.cursor(
        "SELECT r.event_id, r.customer_id::text AS account_id, s.subscriber, r.service,"
        " r.start_time, r.quantity, r.amount_micros, rtrim(r.currency) AS currency"
        " FROM rated_usage r LEFT JOIN subscriptions s ON s.tenant_id = r.tenant_id"
        " AND s.subscription_id = r.subscription_id"
        f" WHERE r.tenant_id = $1 AND r.rated_at > {_AFTER} AND r.rated_at <= $3"
        " ORDER BY r.rated_at, r.event_id", tenant, after, upto, prefetch=prefetch)
    async for row in cursor:
        yield MirroredRecord(**dict(row))


@dataclass(frozen=True, slots=True)
class MirroredDocument:
    invoice_id: uuid.UUID
    kind: str
    bill_no: str
    account_id: str
    bill_date: date
    period_start: date
    period_end: date
    due_date: date | None
    currency: str
    net_micros: int
    tax_micros: int
    total_micros: int


async def documents(conn: Connection, tenant: str, after: datetime | None,
                    upto: datetime) -> list[MirroredDocument]:
    """Invoices and statements issued in (after, upto], in issue order (their content is
    immutable; payments and credit notes are not mirrored)."""
    rows = await conn.fetch(
        "SELECT invoice_id, kind, bill_no, customer_id::text AS account_id, bill_date,"
        " period_start, period_end, due_date, rtrim(currency) AS currency, net_micros,"
        " tax_micros, total_micros FROM invoices"
        f" WHERE tenant_id = $1 AND billed_at > {_AFTER} AND billed_at <= $3"
        " ORDER BY billed_at, series, number", tenant, after, upto)
    return [MirroredDocument(**dict(r)) for r in rows]


# --------------------------------------------------------------------------- reconciliation


async def run_of_extract(conn: Connection, sha256: str) -> uuid.UUID | None:
    """The latest reconciliation run of an extract with this content, if any."""
    run_id: uuid.UUID | None = await conn.fetchval(
        "SELECT run_id FROM reconciliation_runs WHERE source_sha256 = $1"
        " ORDER BY started_at DESC LIMIT 1", sha256)
    return run_id


async def run_summary(conn: Connection, run_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT run_id, source, source_sha256, totals_source, period_start, period_end,"
        " amount_unit, tolerance_micros, tolerance_ppm, legacy_records, tollgate_records,"
        " matched, variances, started_at, finished_at FROM reconciliation_runs"
        " WHERE run_id = $1", run_id)
    return None if row is None else dict(row)
