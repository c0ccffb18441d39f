"""Reconciliation in SQL: a legacy extract is COPYed into temporary staging tables (no row-level
security there, so COPY is allowed; they vanish at commit) and matched set-wise against the
tenant's rated usage. Every statement is one pass over the data; nothing row by row in Python.

Matching, in order (docs/legacy-feed.md):
1. the first legacy record of each event id is paired with Tollgate's record of that id;
2. legacy records without an event id, or with one Tollgate does not know, are paired with
   unpaired Tollgate records of the period by (subscriber, service, event time, units), the
   n-th legacy record of a key with the n-th Tollgate record of it;
3. what remains unpaired is a variance: a repeated event id or a repeated key is a duplicate, the
   rest is missing on the other side; pairs are compared (amount beyond the tolerance, other
   attributes, event id).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from tollgate_core.store.db import Connection

_STAGING = """
CREATE TEMP TABLE legacy_stage (
    line_no bigint GENERATED ALWAYS AS IDENTITY, legacy_record_id text, event_id uuid,
    account_id text, subscriber text, service text, event_time timestamptz, units bigint,
    amount bigint, currency text) ON COMMIT DROP;
CREATE TEMP TABLE legacy_totals_stage (
    line_no bigint GENERATED ALWAYS AS IDENTITY, account_id text, day date, currency text,
    record_count bigint, amount bigint) ON COMMIT DROP;
CREATE TEMP TABLE unit_factor (currency text PRIMARY KEY, factor bigint NOT NULL)
    ON COMMIT DROP;
CREATE TEMP TABLE tg (
    event_id uuid PRIMARY KEY, account_id text, subscriber text, service text,
    start_time timestamptz, quantity bigint, amount_micros bigint, currency text,
    in_period boolean) ON COMMIT DROP;
CREATE TEMP TABLE pairs (line_no bigint PRIMARY KEY, event_id uuid UNIQUE, how text)
    ON COMMIT DROP;
CREATE TEMP TABLE tt (
    account_id text, day date, currency text, record_count bigint, amount bigint,
    amount_micros bigint, factor bigint) ON COMMIT DROP;
CREATE TEMP TABLE lt (
    line_no bigint, account_id text, day date, currency text, record_count bigint,
    amount bigint, factor bigint, occurrence bigint) ON COMMIT DROP;
CREATE TEMP TABLE v (
    kind text, event_id uuid, legacy_record_id text, legacy_line bigint, account_id text,
    subscriber text, day date, currency text, legacy_amount_micros bigint,
    tollgate_amount_micros bigint, difference_micros bigint, detail text) ON COMMIT DROP;
"""


async def create_staging(conn: Connection) -> None:
    await conn.execute("SET LOCAL TimeZone = 'UTC'")
    await conn.execute(_STAGING)


async def copy_records(conn: Connection, path: Path, columns: list[str]) -> int:
    """`columns`: the staging column of each file column, in file order."""
    status = await conn.copy_to_table(
        "legacy_stage", source=path, columns=columns, format="csv", header=True,
        force_null=[c for c in ("event_id", "account_id") if c in columns])
    return int(status.split()[-1])


async def copy_totals(conn: Connection, path: Path, columns: list[str]) -> int:
    status = await conn.copy_to_table(
        "legacy_totals_stage", source=path, columns=columns, format="csv", header=True)
    return int(status.split()[-1])


async def first_incomplete_line(conn: Connection, table: str, columns: list[str]) -> int | None:
    """The file line (header = 1) of the first staged row lacking a required value."""
    assert table in {"legacy_stage", "legacy_totals_stage"}
    condition = " OR ".join(f"{c} IS NULL" for c in columns)
    line = await conn.fetchval(f"SELECT min(line_no) + 1 FROM {table} WHERE {condition}")
    return None if line is None else int(line)


async def legacy_span(conn: Connection) -> tuple[datetime | None, datetime | None, list[str]]:
    row = await conn.fetchrow("SELECT min(event_time) AS first, max(event_time) AS last"
                              " FROM legacy_stage")
    currencies = await conn.fetch(
        "SELECT currency FROM legacy_stage UNION SELECT currency FROM legacy_totals_stage")
    assert row is not None
    return row["first"], row["last"], sorted(r["currency"] for r in currencies)


async def set_unit_factors(conn: Connection, factors: dict[str, int]) -> None:
    await conn.execute("INSERT INTO unit_factor SELECT * FROM unnest($1::text[], $2::bigint[])",
                       list(factors), list(factors.values()))


_TOLLGATE_SIDE = """
INSERT INTO tg
SELECT r.event_id, r.customer_id::text, s.subscriber, r.service, r.start_time, r.quantity,
       r.amount_micros, rtrim(r.currency), true
FROM rated_usage r LEFT JOIN subscriptions s
  ON s.tenant_id = r.tenant_id AND s.subscription_id = r.subscription_id
WHERE r.tenant_id = $1 AND r.start_time >= $2 AND r.start_time < $3
UNION ALL
SELECT r.event_id, r.customer_id::text, s.subscriber, r.service, r.start_time, r.quantity,
       r.amount_micros, rtrim(r.currency), false
FROM (SELECT DISTINCT event_id FROM legacy_stage WHERE event_id IS NOT NULL) l
JOIN rated_usage r ON r.tenant_id = $1 AND r.event_id = l.event_id
LEFT JOIN subscriptions s ON s.tenant_id = r.tenant_id AND s.subscription_id = r.subscription_id
WHERE NOT (r.start_time >= $2 AND r.start_time < $3)
"""

_PREPARE = """
CREATE INDEX ON tg (subscriber, service, start_time, quantity);
ANALYZE tg;
CREATE TEMP TABLE l ON COMMIT DROP AS
SELECT s.*, f.factor,
       CASE WHEN s.event_id IS NULL THEN 1
            ELSE row_number() OVER (PARTITION BY s.event_id ORDER BY s.line_no) END
           AS occurrence
FROM legacy_stage s LEFT JOIN unit_factor f ON f.currency = s.currency;
CREATE INDEX ON l (event_id);
ANALYZE l;
INSERT INTO pairs
SELECT l.line_no, t.event_id, 'id' FROM l JOIN tg t ON t.event_id = l.event_id
WHERE l.occurrence = 1;
INSERT INTO pairs
SELECT a.line_no, b.event_id, CASE WHEN a.event_id IS NULL THEN 'key' ELSE 'key-id' END
FROM (SELECT l.line_no, l.event_id, l.subscriber, l.service, l.event_time, l.units,
             row_number() OVER (PARTITION BY l.subscriber, l.service, l.event_time, l.units
                                ORDER BY l.line_no) AS rn
      FROM l WHERE l.occurrence = 1
        AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.line_no = l.line_no)) a
JOIN (SELECT t.event_id, t.subscriber, t.service, t.start_time, t.quantity,
             row_number() OVER (PARTITION BY t.subscriber, t.service, t.start_time, t.quantity
                                ORDER BY t.event_id) AS rn
      FROM tg t WHERE t.in_period
        AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.event_id = t.event_id)) b
  ON b.subscriber = a.subscriber AND b.service = a.service AND b.start_time = a.event_time
 AND b.quantity = a.units AND b.rn = a.rn;
CREATE TEMP TABLE cmp ON COMMIT DROP AS
SELECT p.how, l.line_no, l.legacy_record_id, l.event_id AS legacy_event_id,
       l.account_id AS legacy_account, l.subscriber AS legacy_subscriber,
       l.service AS legacy_service, l.event_time, l.units, l.amount, l.factor,
       l.currency AS legacy_currency, t.event_id, t.account_id, t.subscriber, t.service,
       t.start_time, t.quantity, t.amount_micros, t.currency
FROM pairs p JOIN l ON l.line_no = p.line_no JOIN tg t ON t.event_id = p.event_id;
"""

# $1: the tenant's time zone (days are the tenant's calendar days)
_RECORD_VARIANCES = [
    # a repeated event id: every occurrence after the first
    """INSERT INTO v
    SELECT 'DUPLICATE_IN_LEGACY', d.event_id, d.legacy_record_id, d.line_no + 1, d.account_id,
           d.subscriber, (d.event_time AT TIME ZONE $1)::date, d.currency, d.amount * d.factor,
           NULL, NULL, 'event id already on line ' || (f.line_no + 1)
    FROM l d JOIN l f ON f.event_id = d.event_id AND f.occurrence = 1
    WHERE d.occurrence > 1""",
    # unpaired: a duplicate when Tollgate has the same usage (already paired), else missing
    """INSERT INTO v
    SELECT CASE WHEN k.event_id IS NULL THEN 'MISSING_IN_TOLLGATE'
                ELSE 'DUPLICATE_IN_LEGACY' END,
           coalesce(k.event_id, u.event_id), u.legacy_record_id, u.line_no + 1, u.account_id,
           u.subscriber, (u.event_time AT TIME ZONE $1)::date, u.currency,
           u.amount * u.factor, NULL, NULL,
           CASE WHEN k.event_id IS NOT NULL
                    THEN 'same subscriber, service, time and units as an already matched record'
                WHEN u.event_id IS NULL
                    THEN 'no Tollgate record with this subscriber, service, time and units'
                ELSE 'event id unknown to Tollgate' END
    FROM l u LEFT JOIN LATERAL (
        SELECT t.event_id FROM tg t
        WHERE t.subscriber = u.subscriber AND t.service = u.service
          AND t.start_time = u.event_time AND t.quantity = u.units
        ORDER BY t.event_id LIMIT 1) k ON true
    WHERE u.occurrence = 1 AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.line_no = u.line_no)""",
    """INSERT INTO v
    SELECT 'MISSING_IN_LEGACY', t.event_id, NULL, NULL, t.account_id, t.subscriber,
           (t.start_time AT TIME ZONE $1)::date, t.currency, NULL, t.amount_micros, NULL, ''
    FROM tg t
    WHERE t.in_period AND NOT EXISTS (SELECT 1 FROM pairs p WHERE p.event_id = t.event_id)""",
    """INSERT INTO v
    SELECT 'EVENT_ID_DIFFERS', c.event_id, c.legacy_record_id, c.line_no + 1, c.account_id,
           c.subscriber, (c.start_time AT TIME ZONE $1)::date, c.currency, c.amount * c.factor,
           c.amount_micros, NULL, 'legacy event id ' || c.legacy_event_id
    FROM cmp c WHERE c.how = 'key-id'""",
    """INSERT INTO v
    SELECT 'ATTRIBUTE_DIFFERS', c.event_id, c.legacy_record_id, c.line_no + 1, c.account_id,
           c.subscriber, (c.start_time AT TIME ZONE $1)::date, c.currency, c.amount * c.factor,
           c.amount_micros, NULL,
           concat_ws('; ',
             CASE WHEN c.units <> c.quantity THEN format('units %s vs %s', c.units, c.quantity)
             END,
             CASE WHEN c.legacy_subscriber IS DISTINCT FROM c.subscriber
                  THEN format('subscriber %s vs %s', c.legacy_subscriber, c.subscriber) END,
             CASE WHEN c.legacy_service <> c.service
                  THEN format('service %s vs %s', c.legacy_service, c.service) END,
             CASE WHEN c.event_time <> c.start_time
                  THEN format('event time %s vs %s', c.event_time, c.start_time) END,
             CASE WHEN c.legacy_account <> c.account_id
                  THEN format('account %s vs %s', c.legacy_account, c.account_id) END)
    FROM cmp c
    WHERE c.how = 'id' AND (c.units <> c.quantity
        OR c.legacy_subscriber IS DISTINCT FROM c.subscriber OR c.legacy_service <> c.service
        OR c.event_time <> c.start_time OR c.legacy_account <> c.account_id)""",
]

# $1 tz, $2 tolerance in micro-units, $3 tolerance in parts per million of Tollgate's amount.
# Tollgate's amount is first expressed in the extract's unit with the legacy rounding (half-even)
# so that a legitimate rounding to cents is no variance while one cent off is.
_AMOUNT_VARIANCES = """
INSERT INTO v
SELECT 'AMOUNT_DIFFERS', c.event_id, c.legacy_record_id, c.line_no + 1, c.account_id,
       c.subscriber, (c.start_time AT TIME ZONE $1)::date, c.legacy_currency,
       c.amount * c.factor, c.amount_micros, d.difference,
       CASE WHEN c.legacy_currency <> c.currency
            THEN format('currency %s vs %s', c.legacy_currency, c.currency)
            ELSE format('%s vs %s in the extract''s unit', c.amount,
                        assurance_div_half_even(c.amount_micros, c.factor)) END
FROM cmp c CROSS JOIN LATERAL (
    SELECT (c.amount - assurance_div_half_even(c.amount_micros, c.factor)) * c.factor
           AS difference) d
WHERE c.legacy_currency <> c.currency
   OR NOT (abs(d.difference) <= $2
           OR abs(d.difference)::numeric * 1000000 <= $3::numeric * c.amount_micros)
"""

# tt: $1 tz; lt: $1, $2 the period's first and last day; the comparison: $1 tolerance in
# micro-units, $2 in parts per million
_TOTAL_VARIANCES = [
    """INSERT INTO tt
    SELECT t.account_id, (t.start_time AT TIME ZONE $1)::date AS day, min(t.currency) AS currency,
           count(*) AS record_count,
           sum(assurance_div_half_even(t.amount_micros, f.factor))::bigint AS amount,
           sum(t.amount_micros)::bigint AS amount_micros, min(f.factor) AS factor
    FROM tg t JOIN unit_factor f ON f.currency = t.currency
    WHERE t.in_period GROUP BY 1, 2""",
    """INSERT INTO lt
    SELECT s.*, f.factor,
           row_number() OVER (PARTITION BY s.account_id, s.day ORDER BY s.line_no)
               AS occurrence
    FROM legacy_totals_stage s LEFT JOIN unit_factor f ON f.currency = s.currency
    WHERE s.day BETWEEN $1 AND $2""",
    """INSERT INTO v
    SELECT 'TOTAL_DUPLICATE_IN_LEGACY', NULL, NULL, d.line_no + 1, d.account_id, NULL, d.day,
           d.currency, d.amount * d.factor, NULL, NULL,
           'account and day already on line ' || (f.line_no + 1)
    FROM lt d JOIN lt f ON f.account_id = d.account_id AND f.day = d.day AND f.occurrence = 1
    WHERE d.occurrence > 1""",
    """INSERT INTO v
    SELECT CASE WHEN t.account_id IS NULL THEN 'TOTAL_MISSING_IN_TOLLGATE'
                WHEN l.account_id IS NULL THEN 'TOTAL_MISSING_IN_LEGACY'
                ELSE 'TOTAL_DIFFERS' END,
           NULL, NULL, l.line_no + 1, coalesce(l.account_id, t.account_id), NULL,
           coalesce(l.day, t.day), coalesce(l.currency, t.currency), l.amount * l.factor,
           t.amount_micros, d.difference,
           CASE WHEN l.account_id IS NOT NULL AND t.account_id IS NOT NULL THEN concat_ws('; ',
               CASE WHEN l.record_count <> t.record_count
                    THEN format('records %s vs %s', l.record_count, t.record_count) END,
               CASE WHEN l.currency <> t.currency
                    THEN format('currency %s vs %s', l.currency, t.currency) END,
               CASE WHEN l.amount <> t.amount
                    THEN format('amount %s vs %s in the extract''s unit', l.amount, t.amount)
               END) ELSE '' END
    FROM (SELECT * FROM lt WHERE occurrence = 1) l
    FULL JOIN tt t ON t.account_id = l.account_id AND t.day = l.day
    CROSS JOIN LATERAL (SELECT (l.amount - t.amount) * l.factor AS difference) d
    WHERE l.account_id IS NULL OR t.account_id IS NULL OR l.record_count <> t.record_count
       OR l.currency <> t.currency
       OR NOT (abs(d.difference) <= $1
               OR abs(d.difference)::numeric * 1000000 <= $2::numeric * t.amount_micros)""",
]


@dataclass(frozen=True, slots=True)
class MatchCounts:
    legacy_records: int
    tollgate_records: int
    matched: int
    by_kind: dict[str, int]

    @property
    def variances(self) -> int:
        return sum(self.by_kind.values())


async def match(conn: Connection, tenant: str, since: datetime, until: datetime, timezone: str,
                tolerance_micros: int, tolerance_ppm: int,
                totals_days: tuple[date, date] | None) -> MatchCounts:
    await conn.execute(_TOLLGATE_SIDE, tenant, since, until)
    await conn.execute("ANALYZE legacy_stage")
    await conn.execute(_PREPARE)
    for statement in _RECORD_VARIANCES:
        await conn.execute(statement, timezone)
    await conn.execute(_AMOUNT_VARIANCES, timezone, tolerance_micros, tolerance_ppm)
    if totals_days is not None:
        await conn.execute(_TOTAL_VARIANCES[0], timezone)
        await conn.execute(_TOTAL_VARIANCES[1], *totals_days)
        await conn.execute(_TOTAL_VARIANCES[2])
        await conn.execute(_TOTAL_VARIANCES[3], tolerance_micros, tolerance_ppm)
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM legacy_stage) AS legacy,"
        " (SELECT count(*) FROM tg WHERE in_period) AS tollgate,"
        " (SELECT count(*) FROM pairs) AS matched")
    assert counts is not None
    kinds = await conn.fetch("SELECT kind, count(*) AS n FROM v GROUP BY kind ORDER BY kind")
    return MatchCounts(counts["legacy"], counts["tollgate"], counts["matched"],
                       {r["kind"]: r["n"] for r in kinds})


@dataclass(frozen=True, slots=True)
class RunRow:
    run_id: uuid.UUID
    source: str
    source_sha256: str
    totals_source: str | None
    period_start: datetime
    period_end: datetime
    amount_unit: str
    tolerance_micros: int
    tolerance_ppm: int
    legacy_records: int
    tollgate_records: int
    matched: int
    variances: int
    started_at: datetime
    finished_at: datetime | None = None


_RUN_COLUMNS = ("run_id, source, source_sha256, totals_source, period_start, period_end,"
                " amount_unit, tolerance_micros, tolerance_ppm, legacy_records,"
                " tollgate_records, matched, variances, started_at, finished_at")


async def save_run(conn: Connection, tenant: str, run: RunRow) -> None:
    """The run and its variances (from the staging table `v`), numbered in a stable order."""
    await conn.execute(
        "INSERT INTO reconciliation_runs (tenant_id, run_id, source, source_sha256,"
        " totals_source, period_start, period_end, amount_unit, tolerance_micros,"
        " tolerance_ppm, legacy_records, tollgate_records, matched, variances, started_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        tenant, run.run_id, run.source, run.source_sha256, run.totals_source, run.period_start,
        run.period_end, run.amount_unit, run.tolerance_micros, run.tolerance_ppm,
        run.legacy_records, run.tollgate_records, run.matched, run.variances, run.started_at)
    await conn.execute(
        "INSERT INTO reconciliation_variances (tenant_id, run_id, variance_no, kind, event_id,"
        " legacy_record_id, legacy_line, account_id, subscriber, day, currency,"
        " legacy_amount_micros, tollgate_amount_micros, difference_micros, detail)"
        " SELECT $1, $2, row_number() OVER (ORDER BY kind, legacy_line NULLS LAST, account_id,"
        "  day, event_id), kind, event_id, legacy_record_id, legacy_line, account_id,"
        "  subscriber, day, currency, legacy_amount_micros, tollgate_amount_micros,"
        "  difference_micros, coalesce(detail, '') FROM v", tenant, run.run_id)


@dataclass(frozen=True, slots=True)
class VarianceRow:
    variance_no: int
    kind: str
    event_id: uuid.UUID | None
    legacy_record_id: str | None
    legacy_line: int | None
    account_id: str | None
    subscriber: str | None
    day: date | None
    currency: str | None
    legacy_amount_micros: int | None
    tollgate_amount_micros: int | None
    difference_micros: int | None
    detail: str

    def as_event_data(self, run_id: uuid.UUID) -> dict[str, Any]:
        return {"runId": str(run_id), "varianceNo": self.variance_no, "kind": self.kind,
                "eventId": str(self.event_id) if self.event_id else None,
                "legacyRecordId": self.legacy_record_id, "legacyLine": self.legacy_line,
                "accountId": self.account_id, "subscriber": self.subscriber,
                "day": self.day.isoformat() if self.day else None, "currency": self.currency,
                "legacyAmountMicros": self.legacy_amount_micros,
                "tollgateAmountMicros": self.tollgate_amount_micros,
                "differenceMicros": self.difference_micros, "detail": self.detail}


_VARIANCE_COLUMNS = ("variance_no, kind, event_id, legacy_record_id, legacy_line, account_id,"
                     " subscriber, day, rtrim(currency) AS currency, legacy_amount_micros,"
                     " tollgate_amount_micros, difference_micros, detail")


def _variance(row: Any) -> VarianceRow:
    return VarianceRow(**dict(row))


async def variances(conn: Connection, run_id: uuid.UUID, *, kind: str | None = None,
                    after: int = 0, limit: int | None = None) -> list[VarianceRow]:
    rows = await conn.fetch(
        f"SELECT {_VARIANCE_COLUMNS} FROM reconciliation_variances WHERE run_id = $1"
        " AND variance_no > $2 AND ($3::text IS NULL OR kind = $3) ORDER BY variance_no"
        " LIMIT $4", run_id, after, kind, limit)
    return [_variance(r) for r in rows]


async def variance_counts(conn: Connection, run_id: uuid.UUID) -> dict[str, int]:
    rows = await conn.fetch("SELECT kind, count(*) AS n FROM reconciliation_variances"
                            " WHERE run_id = $1 GROUP BY kind ORDER BY kind", run_id)
    return {r["kind"]: r["n"] for r in rows}


async def runs(conn: Connection, limit: int,
               before: tuple[datetime, uuid.UUID] | None = None) -> list[RunRow]:
    """Newest first, keyset-paginated on (started_at, run_id)."""
    rows = await conn.fetch(
        f"SELECT {_RUN_COLUMNS} FROM reconciliation_runs"
        " WHERE $1::timestamptz IS NULL OR (started_at, run_id) < ($1, $2::uuid)"
        " ORDER BY started_at DESC, run_id DESC LIMIT $3",
        before[0] if before else None, before[1] if before else None, limit)
    return [RunRow(**dict(r)) for r in rows]


async def get_run(conn: Connection, run_id: uuid.UUID) -> RunRow | None:
    row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM reconciliation_runs"
                              " WHERE run_id = $1", run_id)
    return None if row is None else RunRow(**dict(row))
