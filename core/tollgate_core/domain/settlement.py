"""Partner settlement (B2B2X) arithmetic: revenue shares of rated records and statement figures.

Pure and exact. A rated record's gross amount (integer micro-units) is split between the
operator and every partner agreement that applies to its offer so that

    operator share + Σ partner shares = gross            (exactly, for every record)

Each party's exact share is a Fraction; the integer shares are its floor plus one micro for the
parties with the largest fractional remainders (Hamilton's largest-remainder method), ties
broken by a stable key (the operator first, then agreements by name). So every party is within
one micro of its exact share and the same inputs always give the same split.

Signs: a partner share is positive when the operator owes the partner (payer `operator`) and
negative when the partner owes the operator (payer `partner`). A per-unit fee does not depend on
the gross, so the operator share may be negative (the operator pays the partner more than it
earned on that record); so may several agreements whose percentages add up to more than 100.

A statement also settles the partner's network API charges (ADR 0015), netted against its
payable share: net = payable − charges (negative: the partner pays the operator).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from tollgate_core.domain.catalog import Catalog, percent
from tollgate_core.domain.ledger import AccountKind, revenue_account
from tollgate_core.domain.money import (
    MoneyError,
    currency_exponent,
    div_round_half_even,
    format_micros,
    parse_micros,
)
from tollgate_core.resources.partner import PartnerAgreementSpec, ShareModel

OPERATOR = ""
"""Key of the operator among the parties of a split (sorts before every agreement name)."""

_STATEMENT_NAMESPACE = uuid.UUID("2d7f1c0e-8a4b-4f51-9e3c-5b6a7d8e9f01")


class SettlementError(ValueError):
    """A settlement request that cannot be honoured (bad period, missing FX rate, …)."""


class PeriodKind(StrEnum):
    """How often a partner is settled; `realtime` agreements get daily statements (their
    shares are already booked in real time as accruals)."""

    DAILY = "daily"
    MONTHLY = "monthly"


def partner_payable_account(agreement: str) -> str:
    """The ledger account of what the operator owes (credit) or is owed by (debit) a partner."""
    return f"{AccountKind.PARTNER_PAYABLE.value}:{agreement}"


@dataclass(frozen=True, slots=True)
class ShareTerms:
    """The revenue-share and settlement rules of one agreement, compiled for arithmetic."""

    agreement: str
    partner_id: str
    model: ShareModel
    direction: int
    """+1: the operator pays the partner; -1: the partner pays the operator."""
    percent: Fraction
    fee_micros: int
    """Per-unit fee in micro-units per unit of the service (bytes, seconds, events)."""
    tiers: tuple[tuple[int, Fraction], ...]
    """(monthly gross from which the tier applies, share), by ascending threshold."""
    offers: frozenset[str]
    valid_from: datetime | None
    valid_to: datetime | None
    period: PeriodKind
    minimum_micros: int | None
    cap_micros: int | None
    settlement_currency: str

    def valid_at(self, when: datetime) -> bool:
        if self.valid_from is not None and when < self.valid_from:
            return False
        return self.valid_to is None or when < self.valid_to

    def valid_during(self, start: datetime, end: datetime) -> bool:
        """True when the agreement is valid at some moment of [start, end)."""
        if self.valid_from is not None and self.valid_from >= end:
            return False
        return self.valid_to is None or self.valid_to > start

    @property
    def tiered(self) -> bool:
        return self.model is ShareModel.TIERED


def compile_terms(name: str, spec: PartnerAgreementSpec) -> ShareTerms:
    share = spec.revenue_share
    tiers = tuple(sorted((parse_micros(t.from_amount), percent(t.percent)) for t in share.tiers))
    settlement = spec.settlement
    return ShareTerms(
        agreement=name, partner_id=spec.partner.id, model=share.model,
        direction=1 if share.payer == "operator" else -1,
        percent=percent(share.percent) if share.percent is not None else Fraction(0),
        fee_micros=parse_micros(share.per_unit_fee) if share.per_unit_fee is not None else 0,
        tiers=tiers, offers=frozenset(spec.offer_selector.offers),
        valid_from=spec.valid_for.start, valid_to=spec.valid_for.end,
        period=PeriodKind.MONTHLY if settlement.period == "monthly" else PeriodKind.DAILY,
        minimum_micros=(parse_micros(settlement.minimum_guarantee)
                        if settlement.minimum_guarantee is not None else None),
        cap_micros=parse_micros(settlement.cap) if settlement.cap is not None else None,
        settlement_currency=spec.partner.settlement_currency,
    )


def agreements_for_offer(catalog: Catalog, offer: str) -> list[str]:
    """Names of the agreements whose revenue share applies to `offer`: the offer's own
    `partnerRef` and every agreement whose `offerSelector.offers` lists it, by name.

    `offerSelector.matchLabels` is not evaluated: a catalog revision holds specs, not labels.
    """
    compiled = catalog.offers.get(offer)
    names = {name for name, spec in catalog.partners.items()
             if offer in spec.offer_selector.offers}
    if compiled is not None and compiled.partner is not None \
            and compiled.partner in catalog.partners:
        names.add(compiled.partner)
    return sorted(names)


def tiered_share(tiers: Sequence[tuple[int, Fraction]], running_gross: int,
                 gross: int) -> Fraction:
    """Graduated share of a record of `gross` micros when `running_gross` micros of the month
    came before it: the part of [running, running + gross) in each tier gets that tier's
    share; gross below the first tier's threshold gets none."""
    if gross <= 0:
        return Fraction(0)
    low, high = running_gross, running_gross + gross
    total = Fraction(0)
    for index, (start, share) in enumerate(tiers):
        end = tiers[index + 1][0] if index + 1 < len(tiers) else None
        piece_low = max(low, start)
        piece_high = high if end is None else min(high, end)
        if piece_high > piece_low:
            total += (piece_high - piece_low) * share
    return total


def exact_share(terms: ShareTerms, gross_micros: int, units: int,
                running_gross: int = 0) -> Fraction:
    """The exact (signed) share of one agreement in a record, before any rounding."""
    if terms.model is ShareModel.PERCENTAGE:
        magnitude = gross_micros * terms.percent
    elif terms.model is ShareModel.PER_UNIT_FEE:
        magnitude = Fraction(units * terms.fee_micros)
    else:
        magnitude = tiered_share(terms.tiers, running_gross, gross_micros)
    return terms.direction * magnitude


@dataclass(frozen=True, slots=True)
class Split:
    """One record's gross split into the operator share and each agreement's share."""

    gross_micros: int
    operator_micros: int
    shares: tuple[tuple[str, int], ...]
    """(agreement, signed micros), by agreement name."""

    def share(self, agreement: str) -> int:
        return dict(self.shares)[agreement]


def allocate(gross_micros: int, exact: Mapping[str, Fraction]) -> Split:
    """Round exact partner shares to micros so that operator + partners = gross exactly.

    Largest remainder: every party (the operator, whose exact share is the gross less the
    partners', and each agreement) gets the floor of its exact share; the micros left over
    (fewer than the number of parties) go one each to the largest fractional remainders, ties
    to the operator and then to agreements in name order."""
    if OPERATOR in exact:
        raise ValueError("an agreement cannot be named like the operator")
    parties = [(OPERATOR, gross_micros - sum(exact.values(), Fraction(0)))]
    parties += sorted(exact.items())
    floors = {key: math.floor(value) for key, value in parties}
    left = gross_micros - sum(floors.values())
    by_remainder = sorted(range(len(parties)),
                          key=lambda i: (-(parties[i][1] - floors[parties[i][0]]), i))
    for i in by_remainder[:left]:
        floors[parties[i][0]] += 1
    shares = tuple((key, floors[key]) for key, _ in parties[1:])
    return Split(gross_micros, floors[OPERATOR], shares)


@dataclass(frozen=True, slots=True)
class Revenue:
    """Revenue of one rated record that partner agreements may share."""

    event_id: uuid.UUID
    offer: str
    gross_micros: int
    units: int
    when: datetime
    catalog_revision: int
    revenue_account: str = revenue_account("usage")
    """Where the gross was credited; the partner's share is taken from there."""


def split_record(gross_micros: int, units: int, terms: Sequence[ShareTerms],
                 running_gross: Mapping[str, int]) -> Split:
    """Split a record among the agreements `terms` (all valid for it); `running_gross` is the
    month's gross so far of each tiered agreement (others may be missing)."""
    exact = {t.agreement: exact_share(t, gross_micros, units, running_gross.get(t.agreement, 0))
             for t in terms}
    return allocate(gross_micros, exact)


# --- Settlement periods -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A settlement period: local dates [start, end) in the tenant's timezone."""

    kind: PeriodKind
    start: date
    end: date

    @property
    def label(self) -> str:
        return self.start.strftime("%Y-%m") if self.kind is PeriodKind.MONTHLY \
            else self.start.isoformat()

    def bounds(self, timezone: str) -> tuple[datetime, datetime]:
        """[start, end) as instants: local midnights of the tenant's timezone."""
        zone = ZoneInfo(timezone)
        return (datetime.combine(self.start, time(), zone).astimezone(UTC),
                datetime.combine(self.end, time(), zone).astimezone(UTC))


def month_period(start: date) -> Period:
    first = start.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return Period(PeriodKind.MONTHLY, first, following)


def day_period(day: date) -> Period:
    return Period(PeriodKind.DAILY, day, day + timedelta(days=1))


def period_of(kind: PeriodKind, local_day: date) -> Period:
    return month_period(local_day) if kind is PeriodKind.MONTHLY else day_period(local_day)


def parse_period(text: str) -> Period:
    """`2026-11` (a month) or `2026-11-05` (a day)."""
    try:
        if len(text) == 7:
            return month_period(date.fromisoformat(f"{text}-01"))
        if len(text) == 10:
            return day_period(date.fromisoformat(text))
    except ValueError:
        pass
    raise SettlementError(f"--period: {text!r} is neither a month (2026-11) nor a day "
                          "(2026-11-05)")


def periods_for(kind: PeriodKind, asked: Period) -> list[Period]:
    """The statement periods of an agreement settled `kind` within the asked period: a month
    asked gives one monthly statement or one daily statement per day; a day asked gives a
    daily statement only (a monthly agreement has none for a single day)."""
    if kind is PeriodKind.MONTHLY:
        return [asked] if asked.kind is PeriodKind.MONTHLY else []
    days = (asked.end - asked.start).days
    return [day_period(asked.start + timedelta(days=i)) for i in range(days)]


def local_day(when: datetime, timezone: str) -> date:
    return when.astimezone(ZoneInfo(timezone)).date()


def month_of(when: datetime, timezone: str) -> date:
    return local_day(when, timezone).replace(day=1)


def statement_id(tenant: str, agreement: str, period: Period) -> uuid.UUID:
    """Deterministic: one statement per (agreement, period kind, period start)."""
    return uuid.uuid5(_STATEMENT_NAMESPACE,
                      f"{tenant}/{agreement}/{period.kind.value}/{period.start.isoformat()}")


# --- Statement figures --------------------------------------------------------------------


class AdjustmentKind(StrEnum):
    MINIMUM_GUARANTEE = "minimumGuarantee"
    CAP = "cap"


def bound_share(share_micros: int, direction: int, minimum_micros: int | None,
                cap_micros: int | None) -> tuple[int, AdjustmentKind | None]:
    """The signed adjustment that brings a period's share within [minimum, cap].

    Bounds apply to what changes hands in the payer's direction (the partner's receipts when
    the operator pays, its payments when the partner pays). A cap below the minimum wins."""
    paid = direction * share_micros
    target = paid
    kind: AdjustmentKind | None = None
    if minimum_micros is not None and target < minimum_micros:
        target, kind = minimum_micros, AdjustmentKind.MINIMUM_GUARANTEE
    if cap_micros is not None and target > cap_micros:
        target, kind = cap_micros, AdjustmentKind.CAP
    return direction * (target - paid), (kind if target != paid else None)


def parse_rate(text: str) -> Fraction:
    """An FX rate: settlement-currency units per tenant-currency unit, as an exact decimal
    string ("1.0825"); floats and non-positive rates are refused."""
    if not isinstance(text, str):
        raise SettlementError("an FX rate must be a decimal string")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise SettlementError(f"FX rate {text!r} is not a decimal number") from exc
    if not value.is_finite() or value <= 0:
        raise SettlementError(f"FX rate {text!r} must be a positive decimal number")
    return Fraction(value)


def convert(micros: int, rate: Fraction, currency: str) -> int:
    """`micros` of the tenant currency in `currency` at `rate`, rounded half-even to the
    currency's ISO 4217 minor unit (result in micro-units)."""
    step: int = 10 ** (6 - currency_exponent(currency))
    return div_round_half_even(micros * rate.numerator, rate.denominator * step) * step


@dataclass(frozen=True, slots=True)
class Totals:
    """What a statement claims from the accruals."""

    records: int
    gross_micros: int
    share_micros: int
    carried_records: int = 0
    """Accruals of earlier periods that had already been stated (late usage)."""
    carried_share_micros: int = 0


@dataclass(frozen=True, slots=True)
class ApiLine:
    """Network API calls of one API on a statement and what they cost the partner."""

    api: str
    calls: int
    charge_micros: int


@dataclass(frozen=True, slots=True)
class ApiCharges:
    """What a statement claims from the partner's metered network API calls (ADR 0015): the
    other side of the statement, owed by the partner and netted against its share."""

    lines: tuple[ApiLine, ...] = ()
    """Per API, by name."""
    carried_calls: int = 0
    """Calls of earlier periods that had already been stated (late calls)."""
    carried_micros: int = 0

    @property
    def calls(self) -> int:
        return sum(line.calls for line in self.lines)

    @property
    def charge_micros(self) -> int:
        return sum(line.charge_micros for line in self.lines)


NO_API_CHARGES = ApiCharges()


class NetDirection(StrEnum):
    """Who pays whom the statement's net amount."""

    OPERATOR_PAYS_PARTNER = "operatorPaysPartner"
    PARTNER_PAYS_OPERATOR = "partnerPaysOperator"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Figures:
    """A statement's amounts: in the ledger (tenant currency, micros) and in the partner's
    settlement currency (rounded to its minor unit, lines derived so that they add up)."""

    gross_micros: int
    share_micros: int
    adjustment_micros: int
    adjustment_kind: AdjustmentKind | None
    settlement_currency: str
    rate: Fraction
    settled_gross_micros: int
    settled_share_micros: int
    settled_payable_micros: int
    network_api_micros: int = 0
    """Network API charges of the partner, netted against the payable share."""
    settled_network_api_micros: int = 0

    @property
    def operator_micros(self) -> int:
        return self.gross_micros - self.share_micros

    @property
    def payable_micros(self) -> int:
        return self.share_micros + self.adjustment_micros

    @property
    def net_micros(self) -> int:
        """> 0: the operator pays the partner; < 0: the partner pays the operator."""
        return self.payable_micros - self.network_api_micros

    @property
    def settled_net_micros(self) -> int:
        return self.settled_payable_micros - self.settled_network_api_micros

    @property
    def net_direction(self) -> NetDirection:
        net = self.settled_net_micros
        return (NetDirection.OPERATOR_PAYS_PARTNER if net > 0 else
                NetDirection.PARTNER_PAYS_OPERATOR if net < 0 else NetDirection.NONE)

    @property
    def settled_adjustment_micros(self) -> int:
        return self.settled_payable_micros - self.settled_share_micros

    @property
    def settled_operator_micros(self) -> int:
        return self.settled_gross_micros - self.settled_share_micros


def statement_figures(terms: ShareTerms, totals: Totals, rate: Fraction,
                      bounded: bool = True, api: ApiCharges = NO_API_CHARGES) -> Figures:
    """Apply the minimum guarantee and cap (amounts of the tenant currency, so the ledger
    never holds a converted amount) unless `bounded` is False (the agreement was not valid
    in the period), then convert gross, share, payable and the network API charges `api`
    independently; the adjustment, operator and net lines in the settlement currency are
    their differences. The bounds apply to the revenue share only: network API charges are
    the partner's purchases, netted against what it earns, never capped or guaranteed."""
    adjustment, kind = (bound_share(totals.share_micros, terms.direction, terms.minimum_micros,
                                    terms.cap_micros) if bounded else (0, None))
    currency = terms.settlement_currency
    payable = totals.share_micros + adjustment
    return Figures(
        gross_micros=totals.gross_micros, share_micros=totals.share_micros,
        adjustment_micros=adjustment, adjustment_kind=kind, settlement_currency=currency,
        rate=rate,
        settled_gross_micros=convert(totals.gross_micros, rate, currency),
        settled_share_micros=convert(totals.share_micros, rate, currency),
        settled_payable_micros=convert(payable, rate, currency),
        network_api_micros=api.charge_micros,
        settled_network_api_micros=convert(api.charge_micros, rate, currency))


def decimal_text(rate: Fraction) -> str:
    """An exact rate (a terminating decimal) back as its decimal string."""
    value = Decimal(rate.numerator) / Decimal(rate.denominator)
    if Fraction(value) != rate:
        raise MoneyError(f"{rate} is not a terminating decimal")
    return format(value.normalize(), "f")


def money(micros: int, currency: str, exponent: int | None = None) -> dict[str, Any]:
    """{amountMicros, amount, currency}; `amount` shows at least `exponent` decimals."""
    text = format_micros(micros)
    if exponent:
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac.ljust(exponent, '0')}"
    return {"amountMicros": micros, "amount": text, "currency": currency}


@dataclass(frozen=True, slots=True)
class StatementHeader:
    tenant: str
    statement_id: uuid.UUID
    agreement: str
    spec: PartnerAgreementSpec
    period: Period
    timezone: str
    catalog_revision: int
    currency: str
    issued_at: datetime


STATEMENT_VERSION = 2
"""Version 2 added the network API side (`networkApis`, `networkApiCharges`, `net`)."""


def render_statement(header: StatementHeader, terms: ShareTerms, totals: Totals,
                     figures: Figures, transfers: Sequence[uuid.UUID],
                     api: ApiCharges = NO_API_CHARGES) -> dict[str, Any]:
    """The statement as a JSON document (stored with the statement, never re-rendered): the
    partner's revenue share (owed to it) and its network API charges (owed by it), netted."""
    spec = header.spec
    share = spec.revenue_share
    cur, settle = header.currency, figures.settlement_currency
    cur_exp, settle_exp = currency_exponent(cur), currency_exponent(settle)
    bound = {"minimumGuarantee": (money(terms.minimum_micros, cur, cur_exp)
                                  if terms.minimum_micros is not None else None),
             "cap": money(terms.cap_micros, cur, cur_exp) if terms.cap_micros is not None
             else None}
    return {
        "id": str(header.statement_id),
        "type": "PartnerSettlementStatement",
        "version": STATEMENT_VERSION,
        "tenant": header.tenant,
        "agreement": header.agreement,
        "partner": {"id": spec.partner.id, "displayName": spec.partner.display_name,
                    "contactEmail": spec.partner.contact_email, "role": spec.role.value},
        "period": {"kind": header.period.kind.value, "label": header.period.label,
                   "start": header.period.start.isoformat(),
                   "end": header.period.end.isoformat(), "timezone": header.timezone},
        "catalogRevision": header.catalog_revision,
        "terms": {"model": share.model.value, "payer": share.payer,
                  "percent": share.percent, "perUnitFee": share.per_unit_fee,
                  "tiers": [{"fromAmount": t.from_amount, "percent": t.percent}
                            for t in share.tiers],
                  "settlementPeriod": spec.settlement.period, **bound},
        "records": totals.records,
        "carriedFromEarlierPeriods": {
            "records": totals.carried_records,
            "partnerShare": money(totals.carried_share_micros, cur, cur_exp)},
        "ledger": {
            "currency": cur,
            "gross": money(figures.gross_micros, cur, cur_exp),
            "operatorShare": money(figures.operator_micros, cur, cur_exp),
            "partnerShare": money(figures.share_micros, cur, cur_exp),
            "adjustment": money(figures.adjustment_micros, cur, cur_exp),
            "adjustmentKind": figures.adjustment_kind.value if figures.adjustment_kind
            else None,
            "payable": money(figures.payable_micros, cur, cur_exp),
            "networkApiCharges": money(figures.network_api_micros, cur, cur_exp),
            "net": money(figures.net_micros, cur, cur_exp),
        },
        "networkApis": {
            "calls": api.calls,
            "charges": money(api.charge_micros, cur, cur_exp),
            "byApi": [{"api": line.api, "calls": line.calls,
                       "charges": money(line.charge_micros, cur, cur_exp)}
                      for line in api.lines],
            "carriedFromEarlierPeriods": {
                "calls": api.carried_calls,
                "charges": money(api.carried_micros, cur, cur_exp)},
        },
        "settlement": {
            "currency": settle,
            "fxRate": None if settle == cur else decimal_text(figures.rate),
            "rounding": f"half-even to {settle_exp} decimals (ISO 4217) on gross, partner "
                        "share, payable and network API charges; the other lines are their "
                        "differences",
            "gross": money(figures.settled_gross_micros, settle, settle_exp),
            "operatorShare": money(figures.settled_operator_micros, settle, settle_exp),
            "partnerShare": money(figures.settled_share_micros, settle, settle_exp),
            "adjustment": money(figures.settled_adjustment_micros, settle, settle_exp),
            "payable": money(figures.settled_payable_micros, settle, settle_exp),
            "networkApiCharges": money(figures.settled_network_api_micros, settle,
                                       settle_exp),
            "net": money(figures.settled_net_micros, settle, settle_exp),
            "netDirection": figures.net_direction.value,
        },
        "transfers": [str(t) for t in transfers],
        "issuedAt": header.issued_at.isoformat(),
    }

