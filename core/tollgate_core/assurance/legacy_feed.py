"""The legacy BSS extract format (docs/legacy-feed.md): two CSV files, rated records and
totals per account and day, with amounts as integers of micro-units or of the currency's minor
unit. Reading is done by PostgreSQL (COPY); this module knows the columns and writes files."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path

from tollgate_core.domain.money import currency_exponent, div_round_half_even


class FeedError(ValueError):
    """The extract does not follow docs/legacy-feed.md."""


class AmountUnit(StrEnum):
    MICRO = "micro"  # integers of 10^-6 of the major unit, like Tollgate's ledger
    MINOR = "minor"  # integers of the currency's minor unit (cents; yen for JPY)


AMOUNT_COLUMNS = {"amount_micros": AmountUnit.MICRO, "amount_minor": AmountUnit.MINOR}

RECORD_COLUMNS = ("legacy_record_id", "event_id", "account_id", "subscriber", "service",
                  "event_time", "units", "currency")
"""Every records file has these columns plus one amount column, in any order."""

TOTAL_COLUMNS = ("account_id", "day", "currency", "record_count")
"""Every totals file has these columns plus one amount column, in any order."""


def micros_per_unit(unit: AmountUnit, currency: str) -> int:
    """How many micro-units one unit of the amount column is (1, or 10^(6 - exponent))."""
    if unit is AmountUnit.MICRO:
        return 1
    return int(10 ** (6 - currency_exponent(currency)))


def to_unit(amount_micros: int, unit: AmountUnit, currency: str) -> int:
    """An amount in micro-units expressed in `unit`, rounded half-even."""
    return div_round_half_even(amount_micros, micros_per_unit(unit, currency))


@dataclass(frozen=True, slots=True)
class Header:
    columns: tuple[str, ...]
    """Staging column of each file column, in file order (the amount column is `amount`)."""
    unit: AmountUnit


def read_header(path: Path, required: Sequence[str]) -> Header:
    """Check the header line of an extract; map its columns onto the staging table's."""
    with path.open(newline="", encoding="utf-8") as handle:
        first = next(csv.reader(handle), None)
    if not first:
        raise FeedError(f"{path.name}: empty file, expected a header line")
    names = [c.strip() for c in first]
    amounts = [c for c in names if c in AMOUNT_COLUMNS]
    if len(amounts) != 1:
        raise FeedError(f"{path.name}: needs exactly one of the columns "
                        f"{', '.join(AMOUNT_COLUMNS)}")
    missing = [c for c in required if c not in names]
    unknown = [c for c in names if c not in required and c not in AMOUNT_COLUMNS]
    duplicated = sorted({c for c in names if names.count(c) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}")
    if duplicated:
        problems.append(f"repeated column(s) {', '.join(duplicated)}")
    if problems:
        raise FeedError(f"{path.name}: {'; '.join(problems)}")
    return Header(tuple("amount" if c in AMOUNT_COLUMNS else c for c in names),
                  AMOUNT_COLUMNS[amounts[0]])


@dataclass(slots=True)
class LegacyRecord:
    legacy_record_id: str
    event_id: str  # "" when the legacy system never saw Tollgate's event id
    account_id: str
    subscriber: str
    service: str
    event_time: datetime
    units: int
    amount: int  # in the file's amount unit
    currency: str


@dataclass(frozen=True, slots=True)
class LegacyTotal:
    account_id: str
    day: date
    currency: str
    record_count: int
    amount: int  # in the file's amount unit


def amount_column(unit: AmountUnit, prefix: str = "amount") -> str:
    return f"{prefix}_{'micros' if unit is AmountUnit.MICRO else 'minor'}"


def records_header(unit: AmountUnit) -> list[str]:
    return [*RECORD_COLUMNS[:7], amount_column(unit), "currency"]


def record_row(r: LegacyRecord) -> list[object]:
    return [r.legacy_record_id, r.event_id, r.account_id, r.subscriber, r.service,
            r.event_time.isoformat(), r.units, r.amount, r.currency]


def totals_header(unit: AmountUnit) -> list[str]:
    return ["account_id", "day", "currency", "record_count", amount_column(unit)]


def total_row(t: LegacyTotal) -> list[object]:
    return [t.account_id, t.day.isoformat(), t.currency, t.record_count, t.amount]


def write_records(path: Path, records: Iterable[LegacyRecord], unit: AmountUnit) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(records_header(unit))
        for r in records:
            out.writerow(record_row(r))
            count += 1
    return count


def write_totals(path: Path, totals: Iterable[LegacyTotal], unit: AmountUnit) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(totals_header(unit))
        for t in totals:
            out.writerow(total_row(t))
            count += 1
    return count


# --------------------------------------------------------------------------- mirrored documents


@dataclass(frozen=True, slots=True)
class LegacyDocument:
    """An invoice or prepaid statement as mirrored to the legacy system (amounts in the file's
    unit; documents are rounded to the minor unit, so either unit is exact)."""

    document_id: str
    kind: str  # invoice | statement
    number: str
    account_id: str
    bill_date: date
    period_start: date
    period_end: date  # exclusive
    due_date: date | None
    currency: str
    net: int
    tax: int
    total: int


def documents_header(unit: AmountUnit) -> list[str]:
    return ["document_id", "kind", "number", "account_id", "bill_date", "period_start",
            "period_end", "due_date", "currency", amount_column(unit, "net"),
            amount_column(unit, "tax"), amount_column(unit, "total")]


def document_row(d: LegacyDocument) -> list[object]:
    return [d.document_id, d.kind, d.number, d.account_id, d.bill_date.isoformat(),
            d.period_start.isoformat(), d.period_end.isoformat(),
            d.due_date.isoformat() if d.due_date else "", d.currency, d.net, d.tax, d.total]
