"""Bill cycles and invoice lines (pure): what one account owes for one bill period.

Amounts stay exact micro-units until a line is finished; then each line is rounded half-even
to the currency's minor unit and taxed on its own (the only rounding in billing). An invoice's
total is the sum of its lines' net amounts plus their taxes.

Recurring fees are charged per *coverage period* (a bill cycle a fee pays for). A line charges
the difference between what the coverage should cost now (days the subscription is active in
it) and what earlier invoices already charged for it; so a mid-cycle start is prorated, a
cancellation of a fee paid in advance is credited, a change of plan is both, and billing the
same facts twice gives nothing new. Earlier coverage periods are looked at again (`catch_up`):
a start or an end back-dated into a period already billed is charged or credited on the next
bill, on lines naming the period they cover. See docs/adr/0013-billing.md.

Dates here are local calendar days of the account's timezone (its own, or the tenant's).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tollgate_core.domain.catalog import Catalog, CompiledOffer, RecurringFee
from tollgate_core.domain.money import div_round_half_even, round_to_minor
from tollgate_core.resources.offer import Period


class LineKind(StrEnum):
    RECURRING = "recurring"
    ONE_TIME = "oneTime"
    USAGE = "usage"
    DISCOUNT = "discount"


class DocumentKind(StrEnum):
    INVOICE = "invoice"  # postpaid: money is due
    STATEMENT = "statement"  # prepaid: already paid from the balance; nothing is due


# ----------------------------------------------------------------------------- bill periods


@dataclass(frozen=True, slots=True, order=True)
class BillPeriod:
    """Local dates [start, end) of one bill cycle in the account's timezone.

    Every account of a tenant has the same cycle dates (the tenant's cycle day); the instants
    they stand for depend on the account's timezone (`instants`)."""

    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def next(self) -> BillPeriod:
        return BillPeriod(self.end, _add_month(self.end))

    def previous(self) -> BillPeriod:
        return BillPeriod(_add_month(self.start, -1), self.start)

    def instants(self, timezone: str) -> tuple[datetime, datetime]:
        return local_midnight(self.start, timezone), local_midnight(self.end, timezone)


def _add_month(day: date, months: int = 1) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, day.day)  # cycle days are 1..28: always valid


def period_containing(day: date, cycle_day: int) -> BillPeriod:
    start = date(day.year, day.month, cycle_day)
    if day < start:
        start = _add_month(start, -1)
    return BillPeriod(start, _add_month(start))


def period_starting_in(year: int, month: int, cycle_day: int) -> BillPeriod:
    """The bill period that starts in the given month (`--period 2026-11`)."""
    start = date(year, month, cycle_day)
    return BillPeriod(start, _add_month(start))


def periods_from(first: date, until: BillPeriod, cycles_max: int) -> tuple[BillPeriod, ...]:
    """The bill periods before `until` that start on or after `first`, at most `cycles_max`
    of them (the latest), oldest first: the coverage periods a bill looks at again."""
    out: list[BillPeriod] = []
    period = until
    while len(out) < cycles_max:
        period = period.previous()
        if period.start < first:
            break
        out.append(period)
    return tuple(reversed(out))


def last_ended_period(now: datetime, cycle_day: int, timezone: str) -> BillPeriod:
    """The latest bill period that has ended at `now` in `timezone`."""
    return period_containing(local_date(now, timezone), cycle_day).previous()


def has_ended(period: BillPeriod, now: datetime, timezone: str) -> bool:
    """Whether `period` is over at `now` for an account in `timezone`."""
    return local_midnight(period.end, timezone) <= now


def is_timezone(name: str) -> bool:
    """An IANA timezone name the zone database knows (e.g. America/New_York)."""
    if not name or name != name.strip():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def cycles_between(first: BillPeriod, later: BillPeriod) -> int:
    """How many bill cycles `later` comes after `first` (0 when they are the same)."""
    return (later.start.year - first.start.year) * 12 + later.start.month - first.start.month


def local_midnight(day: date, timezone: str) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(timezone)).astimezone(UTC)


def local_date(instant: datetime, timezone: str) -> date:
    return instant.astimezone(ZoneInfo(timezone)).date()


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class TaxTerms:
    category: str
    rate: Fraction  # 19 % → 19/100
    rate_text: str  # as declared, for the document ("19")
    inclusive: bool


NO_TAX = TaxTerms("none", Fraction(0), "0", False)


@dataclass(frozen=True, slots=True)
class SubscriptionTerms:
    """A subscription as billing sees it; `ended` is the first local day not in service."""

    subscription_id: uuid.UUID
    offer: str
    revision: int
    started: date
    ended: date | None

    def active_days(self, start: date, end: date) -> int:
        first = max(start, self.started)
        last = min(end, self.ended) if self.ended is not None else end
        return max((last - first).days, 0)


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Rated usage of one subscription, service, price and revision (exact micros)."""

    subscription_id: uuid.UUID
    service: str
    price_name: str
    revision: int
    quantity: int
    records: int
    amount_micros: int


ChargedKey = tuple[uuid.UUID, str, date | None]
"""(subscription, price name, coverage start; None for a one-time fee)."""


@dataclass(frozen=True, slots=True)
class AccountFacts:
    customer_id: uuid.UUID
    subscriptions: Sequence[SubscriptionTerms]
    usage: Sequence[UsageTotal]
    charged: Mapping[ChargedKey, int]
    """Exact micros earlier documents charged per key (credits counted negative)."""


@dataclass(frozen=True, slots=True)
class BillingTerms:
    currency: str
    timezone: str
    """The tenant's; an account may bill in its own (the facts are in its local days)."""
    period: BillPeriod
    catalogs: Mapping[int, Catalog]
    taxes: Mapping[str, TaxTerms]
    catch_up: tuple[BillPeriod, ...] = ()
    """Earlier coverage periods (already billed, oldest first) whose recurring fees are
    looked at again: what they should cost now minus what documents charged for them."""

    def tax_for(self, category: str) -> TaxTerms:
        return self.taxes.get(category, NO_TAX) if self.taxes else NO_TAX


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Line:
    kind: LineKind
    subscription_id: uuid.UUID | None
    offer: str
    price_name: str
    revision: int
    description: str
    quantity: int
    coverage: BillPeriod | None
    exact_micros: int
    """What was charged before rounding; for usage, what the ledger already holds."""
    net_micros: int
    tax_micros: int
    tax: TaxTerms

    @property
    def gross_micros(self) -> int:
        return self.net_micros + self.tax_micros


@dataclass(frozen=True, slots=True)
class Bill:
    customer_id: uuid.UUID
    period: BillPeriod
    currency: str
    lines: tuple[Line, ...]

    @property
    def net_micros(self) -> int:
        return sum(line.net_micros for line in self.lines)

    @property
    def tax_micros(self) -> int:
        return sum(line.tax_micros for line in self.lines)

    @property
    def total_micros(self) -> int:
        return self.net_micros + self.tax_micros

    def tax_summary(self) -> list[tuple[TaxTerms, int, int]]:
        """(tax terms, taxable net, tax) per category, for the document."""
        summary: dict[str, tuple[TaxTerms, int, int]] = {}
        for line in self.lines:
            terms, net, tax = summary.get(line.tax.category, (line.tax, 0, 0))
            summary[line.tax.category] = (terms, net + line.net_micros, tax + line.tax_micros)
        return [summary[k] for k in sorted(summary)]


# ----------------------------------------------------------------------------- computing


def finish_line(kind: LineKind, exact_micros: int, tax: TaxTerms, currency: str, *,
                subscription_id: uuid.UUID | None, offer: str, price_name: str, revision: int,
                description: str, quantity: int = 1, coverage: BillPeriod | None = None) -> Line:
    """Round the line to the minor unit (half-even) and tax it.

    Exclusive tax: net is the rounded amount, tax = round(net × rate). Inclusive tax: the
    rounded amount is gross, tax = round(gross × rate / (1 + rate)), net = gross − tax.
    """
    rounded = round_to_minor(exact_micros, currency)
    if tax.inclusive:
        share = tax.rate / (1 + tax.rate)
        tax_micros = round_to_minor(div_round_half_even(rounded * share.numerator,
                                                        share.denominator), currency)
        net = rounded - tax_micros
    else:
        net = rounded
        tax_micros = round_to_minor(div_round_half_even(net * tax.rate.numerator,
                                                        tax.rate.denominator), currency)
    return Line(kind, subscription_id, offer, price_name, revision, description, quantity,
                coverage, exact_micros, net, tax_micros, tax)


def fee_for(fee: RecurringFee, coverage: BillPeriod, active_days: int) -> int:
    """Exact micros a fee costs for `active_days` of a coverage period (half-even to a micro).

    Monthly fees are prorated per day of the cycle (or charged whole when proration is none);
    weekly fees cost amount/7 per day and daily fees amount per day.
    """
    if active_days <= 0:
        return 0
    if fee.period is Period.DAY:
        return fee.amount_micros * active_days
    if fee.period is Period.WEEK:
        return div_round_half_even(fee.amount_micros * active_days, 7)
    if not fee.prorate:
        return fee.amount_micros
    return div_round_half_even(fee.amount_micros * active_days, coverage.days)


@dataclass
class _Drafting:
    terms: BillingTerms
    lines: list[Line] = field(default_factory=list)

    def add(self, kind: LineKind, exact: int, offer: CompiledOffer, sub: SubscriptionTerms,
            price_name: str, description: str, quantity: int = 1,
            coverage: BillPeriod | None = None, revision: int | None = None) -> None:
        if exact == 0:
            return
        t = self.terms
        self.lines.append(finish_line(
            kind, exact, t.tax_for(offer.tax_category), t.currency,
            subscription_id=sub.subscription_id, offer=offer.name, price_name=price_name,
            revision=sub.revision if revision is None else revision,
            description=description, quantity=quantity, coverage=coverage))


def bill_account(terms: BillingTerms, facts: AccountFacts) -> Bill:
    """Every line one account owes for `terms.period`, in a stable order."""
    draft = _Drafting(terms)
    period = terms.period
    for sub in sorted(facts.subscriptions, key=lambda s: (s.started, str(s.subscription_id))):
        catalog = terms.catalogs[sub.revision]
        offer = catalog.offers.get(sub.offer)
        if offer is None:
            continue  # the revision a subscription names always holds its offer
        cycles = _recurring(draft, offer, sub, facts.charged, period, terms.catch_up)
        if offer.one_time_micros and sub.started < period.end \
                and (sub.subscription_id, "oneTime", None) not in facts.charged:
            draft.add(LineKind.ONE_TIME, offer.one_time_micros, offer, sub, "oneTime",
                      f"{offer.display_name}: one-time fee")
        _discounts(draft, offer, sub, cycles, period)
    subs = {s.subscription_id: s for s in facts.subscriptions}
    for usage in sorted(facts.usage, key=lambda u: (str(u.subscription_id), u.service,
                                                    u.price_name, u.revision)):
        sub_terms = subs.get(usage.subscription_id)
        catalog = terms.catalogs[usage.revision]
        offer_name = sub_terms.offer if sub_terms else usage.price_name
        usage_offer = catalog.offers.get(offer_name)
        tax = terms.tax_for(usage_offer.tax_category if usage_offer else "")
        if usage.amount_micros == 0:
            continue  # within allowances: shown by the usage statement, not billed
        draft.lines.append(finish_line(
            LineKind.USAGE, usage.amount_micros, tax, terms.currency,
            subscription_id=usage.subscription_id, offer=offer_name,
            price_name=usage.price_name, revision=usage.revision,
            description=f"{usage.service} usage ({usage.records} records)",
            quantity=usage.quantity))
    return Bill(facts.customer_id, period, terms.currency, tuple(draft.lines))


@dataclass
class _Cycles:
    """Recurring charges of one subscription on this bill, by the bill cycle that charges
    their coverage when the facts are known in time (the discount bases)."""

    charged: dict[BillPeriod, int] = field(default_factory=dict)
    billed_before: set[BillPeriod] = field(default_factory=set)
    """Cycles an earlier document already charged something for (fixed discounts given)."""


def on_time_cycle(coverage: BillPeriod, in_advance: bool, first: BillPeriod,
                  period: BillPeriod) -> BillPeriod:
    """The bill cycle that charges `coverage` when the facts are known in time: the cycle
    before it for a fee in advance (the subscription's first cycle at the earliest), the cycle
    itself in arrears; never later than the bill being made."""
    on_time = coverage.previous() if in_advance else coverage
    return min(max(on_time, first), period)


def _recurring(draft: _Drafting, offer: CompiledOffer, sub: SubscriptionTerms,
               charged: Mapping[ChargedKey, int], period: BillPeriod,
               catch_up: tuple[BillPeriod, ...]) -> _Cycles:
    """Recurring lines of one subscription: the coverage periods of this bill, and earlier
    ones (`catch_up`) whose facts changed after they were billed."""
    first = period_containing(sub.started, period.start.day)
    cycles = _Cycles()
    for fee in offer.recurring:
        current = (period, period.next()) if fee.in_advance else (period,)
        for coverage in catch_up + current:
            days = sub.active_days(coverage.start, coverage.end)
            due = fee_for(fee, coverage, days)
            already = charged.get((sub.subscription_id, fee.price_name, coverage.start), 0)
            if due == already and not (already > 0 and offer.discounts):
                continue  # the usual case, kept cheap: nothing new, no discount to track
            cycle = on_time_cycle(coverage, fee.in_advance, first, period)
            if already > 0:
                cycles.billed_before.add(cycle)
            if due == already:
                continue
            what = (f"{offer.display_name}: {fee.price_name} {coverage.start:%Y-%m-%d} to "
                    f"{coverage.end - timedelta(days=1):%Y-%m-%d}")
            notes = ["period billed before"] if coverage < period else []
            if due < already:
                notes.append("credit for days not in service")
            elif days < coverage.days and fee.prorate:
                notes.append(f"{days} of {coverage.days} days")
            if notes:
                what += f" ({'; '.join(notes)})"
            draft.add(LineKind.RECURRING, due - already, offer, sub, fee.price_name, what,
                      quantity=days, coverage=coverage)
            cycles.charged[cycle] = cycles.charged.get(cycle, 0) + due - already
    return cycles


def _discounts(draft: _Drafting, offer: CompiledOffer, sub: SubscriptionTerms,
               cycles: _Cycles, period: BillPeriod) -> None:
    """Discounts reduce a cycle's positive recurring charges, never below zero. Charges that
    catch up on an earlier cycle get that cycle's discounts (a percentage of them; a fixed
    discount only if no earlier document charged that cycle, which had it then)."""
    first = period_containing(sub.started, period.start.day)
    for cycle_period in sorted(cycles.charged):
        base = cycles.charged[cycle_period]
        if base <= 0:
            continue
        cycle = cycles_between(first, cycle_period)
        remaining = base
        for rule in offer.discounts:
            if rule.cycles is not None and cycle >= rule.cycles:
                continue
            if rule.fraction is not None:
                off = div_round_half_even(base * rule.fraction.numerator,
                                          rule.fraction.denominator)
            elif cycle_period in cycles.billed_before:
                continue
            else:
                off = rule.fixed_micros or 0
            off = min(off, remaining)
            remaining -= off
            earlier = cycle_period < period
            draft.add(LineKind.DISCOUNT, -off, offer, sub, rule.name,
                      f"{offer.display_name}: discount {rule.name} (cycle {cycle + 1}"
                      f"{', billed before' if earlier else ''})",
                      coverage=cycle_period if earlier else None)


# ----------------------------------------------------------------------------- ledger legs


Leg = tuple[str, str, int, str]
"""(debit account, credit account, micros > 0, leg name)."""


def legs(debit: str, credit: str, micros: int, name: str) -> list[Leg]:
    """One transfer leg, turned around when the amount is negative; none for zero."""
    if micros > 0:
        return [(debit, credit, micros, name)]
    if micros < 0:
        return [(credit, debit, -micros, name)]
    return []


@dataclass(frozen=True, slots=True)
class Accounts:
    customer: str
    recurring_revenue: str
    one_time_revenue: str
    usage_revenue: str
    rounding: str
    promotion: str
    tax_payable: str


def bill_legs(bill: Bill, accounts: Accounts) -> list[Leg]:
    """The ledger movements that make the customer's account owe exactly the bill.

    Usage was booked exactly when it was rated, so only its rounding difference moves here.
    Exclusive tax is owed by the customer; inclusive tax is carved out of the revenue.
    """
    a = accounts
    revenue_of = {LineKind.RECURRING: a.recurring_revenue, LineKind.ONE_TIME: a.one_time_revenue,
                  LineKind.USAGE: a.usage_revenue, LineKind.DISCOUNT: a.promotion}
    net: dict[str, int] = {}
    exclusive_tax = 0
    carved: dict[str, int] = {}
    rounding = 0
    for line in bill.lines:
        revenue = revenue_of[line.kind]
        gross = line.net_micros + (line.tax_micros if line.tax.inclusive else 0)
        if line.kind is LineKind.USAGE:
            rounding += gross - line.exact_micros
        else:
            net[revenue] = net.get(revenue, 0) + gross
        if line.tax.inclusive:
            carved[revenue] = carved.get(revenue, 0) + line.tax_micros
        else:
            exclusive_tax += line.tax_micros
    out: list[Leg] = []
    for revenue in sorted(net):
        out += legs(a.customer, revenue, net[revenue], f"net:{revenue}")
    out += legs(a.customer, a.rounding, rounding, "rounding")
    out += legs(a.customer, a.tax_payable, exclusive_tax, "tax")
    for revenue in sorted(carved):
        out += legs(revenue, a.tax_payable, carved[revenue], f"tax:{revenue}")
    return out


def outstanding(total: int, paid: int, credited: int) -> int:
    return total - paid - credited


def allocate(amount: int, open_items: Iterable[tuple[uuid.UUID, int]]
             ) -> list[tuple[uuid.UUID, int]]:
    """Spread a payment over open items (oldest first); what is left stays on the account."""
    out = []
    for item, due in open_items:
        if amount <= 0:
            break
        take = min(amount, due)
        if take > 0:
            out.append((item, take))
            amount -= take
    return out
