"""Bill cycles, proration, discounts, taxes and rounding: worked examples computed by hand,
and properties of the ledger legs a bill posts."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tollgate_core.domain.billing import (
    AccountFacts,
    Accounts,
    Bill,
    BillingTerms,
    BillPeriod,
    ChargedKey,
    LineKind,
    SubscriptionTerms,
    TaxTerms,
    UsageTotal,
    bill_account,
    bill_legs,
    fee_for,
    finish_line,
    has_ended,
    is_timezone,
    last_ended_period,
    local_date,
    local_midnight,
    period_containing,
    periods_from,
)
from tollgate_core.domain.catalog import Catalog, compile_offer
from tollgate_core.resources.offer import OfferSpec

SUB = uuid.UUID(int=7)
CUSTOMER = uuid.UUID(int=1)
NOV = BillPeriod(date(2026, 11, 1), date(2026, 12, 1))  # 30 days
VAT19 = TaxTerms("standard", Fraction(19, 100), "19", inclusive=False)


def offer(name: str = "plan", amount: str = "20", timing: str = "inAdvance",
          proration: str = "daily", **extra: Any) -> Catalog:
    spec = OfferSpec.model_validate({
        "tenantRef": {"name": "t"}, "displayName": "Plan", "kind": "plan",
        "taxCategory": "standard",
        "prices": [{"name": "monthly", "priceType": "recurring", "recurring": {
            "amount": amount, "period": "month", "proration": proration, "timing": timing}}],
        **extra})
    return Catalog("EUR", "Europe/Berlin", {name: compile_offer(name, spec)}, {})


def terms(catalog: Catalog, tax: TaxTerms = VAT19, period: BillPeriod = NOV,
          currency: str = "EUR", catch_up: tuple[BillPeriod, ...] = ()) -> BillingTerms:
    return BillingTerms(currency, "Europe/Berlin", period, {1: catalog}, {tax.category: tax},
                        catch_up)


def sub(started: date, ended: date | None = None) -> SubscriptionTerms:
    return SubscriptionTerms(SUB, "plan", 1, started, ended)


def test_periods_follow_the_cycle_day() -> None:
    assert period_containing(date(2026, 11, 3), 15) == BillPeriod(date(2026, 10, 15),
                                                                   date(2026, 11, 15))
    assert period_containing(date(2026, 12, 20), 15).next() == BillPeriod(date(2027, 1, 15),
                                                                         date(2027, 2, 15))


def test_mid_cycle_start_in_advance_is_prorated_then_charged_ahead() -> None:
    # Started 16 Nov: November has 30 days, 15 of them in service → 20.00 × 15/30 = 10.00;
    # December is charged ahead in full: 20.00. VAT 19 % on each line: 1.90 and 3.80.
    bill = bill_account(terms(offer()), AccountFacts(CUSTOMER, [sub(date(2026, 11, 16))], [], {}))
    assert [(ln.net_micros, ln.tax_micros) for ln in bill.lines] == [
        (10_000_000, 1_900_000), (20_000_000, 3_800_000)]
    assert [ln.coverage for ln in bill.lines] == [NOV, NOV.next()]
    assert bill.total_micros == 35_700_000


def test_cancellation_credits_days_paid_in_advance() -> None:
    # November was charged in full (20.00) by October's invoice; cancelled from 21 Nov: 20 of
    # 30 days in service are worth 13.333333, so 6.666667 is credited → -6.67 net, and VAT
    # -6.67 × 0.19 = -1.2673 → -1.27. Nothing for December.
    charged: dict[ChargedKey, int] = {(SUB, "monthly", NOV.start): 20_000_000}
    bill = bill_account(terms(offer()), AccountFacts(
        CUSTOMER, [sub(date(2026, 10, 1), date(2026, 11, 21))], [], charged))
    assert [(ln.exact_micros, ln.net_micros, ln.tax_micros) for ln in bill.lines] == [
        (-6_666_667, -6_670_000, -1_270_000)]
    assert "credit" in bill.lines[0].description


def test_a_period_already_charged_gives_nothing_new() -> None:
    charged: dict[ChargedKey, int] = {(SUB, "monthly", NOV.start): 20_000_000,
               (SUB, "monthly", NOV.end): 20_000_000}
    bill = bill_account(terms(offer()), AccountFacts(CUSTOMER, [sub(date(2026, 1, 1))], [],
                                                     charged))
    assert bill.lines == ()


def test_in_arrears_charges_only_the_period_just_ended() -> None:
    # Started 11 Nov: 20 of 30 days → 20.00 × 20/30 = 13.333333 → 13.33; no December line.
    bill = bill_account(terms(offer(timing="inArrears")),
                        AccountFacts(CUSTOMER, [sub(date(2026, 11, 11))], [], {}))
    assert [(ln.exact_micros, ln.net_micros) for ln in bill.lines] == [(13_333_333, 13_330_000)]


def test_no_proration_charges_the_whole_fee() -> None:
    bill = bill_account(terms(offer(timing="inArrears", proration="none")),
                        AccountFacts(CUSTOMER, [sub(date(2026, 11, 29))], [], {}))
    assert [ln.net_micros for ln in bill.lines] == [20_000_000]


def test_discount_for_the_first_cycle_only() -> None:
    # 50 % off for one cycle. Started 1 Nov: lines Nov 20.00 + Dec 20.00 = 40.00 → -20.00.
    catalog = offer(discounts=[{"name": "welcome", "percent": "50", "cycles": 1}])
    first = bill_account(terms(catalog), AccountFacts(CUSTOMER, [sub(date(2026, 11, 1))], [], {}))
    assert [(ln.kind, ln.net_micros) for ln in first.lines] == [
        (LineKind.RECURRING, 20_000_000), (LineKind.RECURRING, 20_000_000),
        (LineKind.DISCOUNT, -20_000_000)]
    # December's invoice (cycle 2) charges January without a discount.
    december = terms(catalog, period=NOV.next())
    charged: dict[ChargedKey, int] = {(SUB, "monthly", NOV.end): 20_000_000}
    second = bill_account(december, AccountFacts(CUSTOMER, [sub(date(2026, 11, 1))], [], charged))
    assert [ln.kind for ln in second.lines] == [LineKind.RECURRING]


def test_fixed_discount_never_exceeds_the_charge() -> None:
    catalog = offer(amount="3", timing="inArrears",
                    discounts=[{"name": "loyal", "fixed": "5"}])
    bill = bill_account(terms(catalog), AccountFacts(CUSTOMER, [sub(date(2026, 1, 1))], [], {}))
    assert bill.net_micros == 0


def test_one_time_fee_is_charged_once() -> None:
    spec_extra: dict[str, Any] = {"prices": [{"name": "activation", "priceType": "oneTime",
                              "oneTime": {"amount": "9.99"}}]}
    catalog = offer(**spec_extra)
    facts = AccountFacts(CUSTOMER, [sub(date(2026, 11, 5))], [], {})
    assert [ln.net_micros for ln in bill_account(terms(catalog), facts).lines] == [9_990_000]
    charged: dict[ChargedKey, int] = {(SUB, "oneTime", None): 9_990_000}
    again = AccountFacts(CUSTOMER, [sub(date(2026, 11, 5))], [], charged)
    assert bill_account(terms(catalog), again).lines == ()


def test_usage_line_rounds_half_even_once() -> None:
    # Rated exactly 1.235000 EUR; half-even to cents → 1.24 (4 is even). VAT 0.2356 → 0.24.
    usage = [UsageTotal(SUB, "data", "data-payg", 1, 3_000, 12, 1_235_000)]
    bill = bill_account(terms(offer(amount="0")), AccountFacts(CUSTOMER, [sub(date(2026, 1, 1))],
                                                               usage, {}))
    (line,) = bill.lines
    assert (line.kind, line.net_micros, line.tax_micros, line.revision) == (
        LineKind.USAGE, 1_240_000, 240_000, 1)
    assert finish_line(LineKind.USAGE, 1_225_000, VAT19, "EUR", subscription_id=None, offer="x",
                       price_name="x", revision=1, description="").net_micros == 1_220_000


def test_inclusive_tax_is_carved_out_of_the_price() -> None:
    # JPY has no minor unit. 1,000 JPY including 10 % tax: tax = 1000 × 10/110 = 90.9 → 91,
    # net 909.
    jp_tax = TaxTerms("standard", Fraction(1, 10), "10", inclusive=True)
    line = finish_line(LineKind.RECURRING, 1_000_000_000, jp_tax, "JPY", subscription_id=None,
                       offer="x", price_name="x", revision=1, description="")
    assert (line.net_micros, line.tax_micros) == (909_000_000, 91_000_000)


ACCOUNTS = Accounts("customer:c", "revenue:recurring", "revenue:oneTime", "revenue:usage",
                    "revenue:rounding", "promotion:expense", "tax:payable")


@given(
    fee=st.integers(0, 100_000_000),
    started_day=st.integers(1, 30),
    usage_micros=st.lists(st.integers(0, 50_000_000), max_size=4),
    inclusive=st.booleans(),
    discount=st.sampled_from([None, "10", "33.3333", "100"]),
)
def test_legs_make_the_customer_owe_exactly_the_bill(
        fee: int, started_day: int, usage_micros: list[int], inclusive: bool,
        discount: str | None) -> None:
    """Usage is in the ledger already at its exact amount; after the bill's legs the customer
    has been debited exactly the invoice total, and every leg balances (debit = credit)."""
    amount = f"{fee // 1_000_000}.{fee % 1_000_000:06d}"
    extra: dict[str, Any] = {"discounts": [{"name": "d", "percent": discount}]} if discount else {}
    tax = TaxTerms("standard", Fraction(19, 100), "19", inclusive)
    usage = [UsageTotal(SUB, "data", f"p{i}", 1, 1, 1, m) for i, m in enumerate(usage_micros)]
    bill = bill_account(terms(offer(amount=amount, **extra), tax=tax), AccountFacts(
        CUSTOMER, [sub(date(2026, 11, started_day))], usage, {}))
    debited = sum(m for d, _, m, _ in bill_legs(bill, ACCOUNTS) if d == ACCOUNTS.customer) - \
        sum(m for _, c, m, _ in bill_legs(bill, ACCOUNTS) if c == ACCOUNTS.customer)
    assert debited + sum(usage_micros) == bill.total_micros
    assert all(m > 0 and d != c for d, c, m, _ in bill_legs(bill, ACCOUNTS))
    assert bill.total_micros == sum(ln.net_micros + ln.tax_micros for ln in bill.lines)
    assert all(ln.net_micros % 10_000 == 0 and ln.tax_micros % 10_000 == 0 for ln in bill.lines)


# ----------------------------------------------------------------------------- account timezones

MARCH = BillPeriod(date(2026, 3, 1), date(2026, 4, 1))  # 31 days; DST begins in both zones
NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"


def test_a_bill_cycle_starts_at_local_midnight_of_the_accounts_timezone() -> None:
    # New York is on EST (UTC-5) on 1 March and on EDT (UTC-4) from 8 March; Berlin on CET
    # (UTC+1) and CEST (UTC+2) from 29 March. March 2026 is 31 local days in both zones,
    # 743 hours long in each (one hour lost to DST).
    assert MARCH.instants(NEW_YORK) == (datetime(2026, 3, 1, 5, tzinfo=UTC),
                                        datetime(2026, 4, 1, 4, tzinfo=UTC))
    assert MARCH.instants(BERLIN) == (datetime(2026, 2, 28, 23, tzinfo=UTC),
                                      datetime(2026, 3, 31, 22, tzinfo=UTC))
    # A subscription started at 03:30 UTC on 15 March is in service from 14 March in New
    # York (23:30 EDT) but from 15 March in Berlin (04:30 CET): 18 or 17 of 31 days.
    started = datetime(2026, 3, 15, 3, 30, tzinfo=UTC)
    assert (local_date(started, NEW_YORK), local_date(started, BERLIN)) == (
        date(2026, 3, 14), date(2026, 3, 15))
    bill = bill_account(terms(offer(timing="inArrears"), period=MARCH), AccountFacts(
        CUSTOMER, [sub(local_date(started, NEW_YORK))], [], {}))
    # 20.00 × 18/31 = 11.612903 → 11.61
    assert [(ln.quantity, ln.exact_micros, ln.net_micros) for ln in bill.lines] == [
        (18, 11_612_903, 11_610_000)]


def test_a_period_ends_for_each_account_at_its_own_midnight() -> None:
    berlin_over = local_midnight(MARCH.end, BERLIN)  # 22:00 UTC on 31 March
    new_york_over = local_midnight(MARCH.end, NEW_YORK)  # 04:00 UTC on 1 April
    assert new_york_over - berlin_over == timedelta(hours=6)
    between = berlin_over + timedelta(hours=1)
    assert has_ended(MARCH, between, BERLIN) and not has_ended(MARCH, between, NEW_YORK)
    assert last_ended_period(between, 1, BERLIN) == MARCH
    assert last_ended_period(between, 1, NEW_YORK) == MARCH.previous()
    assert has_ended(MARCH, new_york_over, NEW_YORK)
    assert not has_ended(MARCH, new_york_over - timedelta(microseconds=1), NEW_YORK)


def test_timezones_are_iana_names() -> None:
    assert is_timezone("America/New_York") and is_timezone("UTC")
    assert not is_timezone("Mars/Olympus_Mons")
    assert not is_timezone("")
    assert not is_timezone(" Europe/Berlin")
    assert not is_timezone("../etc/passwd")


# ----------------------------------------------------------------------------- back-dated facts

OCT = NOV.previous()  # 31 days
DEC = NOV.next()  # 31 days


def charged_by(*bills: Bill) -> dict[ChargedKey, int]:
    """What these bills charged per (subscription, price, coverage), as the store reads it."""
    out: dict[ChargedKey, int] = {}
    for bill in bills:
        for ln in bill.lines:
            if ln.kind is LineKind.RECURRING:
                assert ln.coverage is not None and ln.subscription_id is not None
                key = (ln.subscription_id, ln.price_name, ln.coverage.start)
                out[key] = out.get(key, 0) + ln.exact_micros
    return out


def test_periods_looked_at_again_start_at_the_first_bill_run() -> None:
    assert periods_from(OCT.start, DEC, 3) == (OCT, NOV)
    assert periods_from(date(2026, 1, 1), DEC, 3) == (NOV.previous().previous(), OCT, NOV)
    assert periods_from(DEC.start, DEC, 3) == ()


def test_a_start_back_dated_into_a_billed_period_is_charged_on_the_next_bill() -> None:
    # November's bill went out before the subscription was entered; it started 16 November.
    # December's bill: November caught up, 15 of 30 days → 20.00 × 15/30 = 10.00; December
    # (which November's bill would have charged in advance) 20.00; January in advance 20.00.
    bill = bill_account(terms(offer(), period=DEC, catch_up=(OCT, NOV)),
                        AccountFacts(CUSTOMER, [sub(date(2026, 11, 16))], [], {}))
    assert [(ln.coverage, ln.quantity, ln.net_micros, ln.tax_micros) for ln in bill.lines] == [
        (NOV, 15, 10_000_000, 1_900_000), (DEC, 31, 20_000_000, 3_800_000),
        (DEC.next(), 31, 20_000_000, 3_800_000)]
    assert bill.lines[0].description == (
        "Plan: monthly 2026-11-01 to 2026-11-30 (period billed before; 15 of 30 days)")
    # Billing the same facts again charges nothing.
    again = AccountFacts(CUSTOMER, [sub(date(2026, 11, 16))], [], charged_by(bill))
    assert bill_account(terms(offer(), period=DEC, catch_up=(OCT, NOV)), again).lines == ()


def test_a_cancellation_back_dated_into_a_billed_period_is_credited() -> None:
    # In service since 1 October; October's bill charged November in advance, November's
    # bill December. Then the cancellation is back-dated to 21 November (the first day not
    # in service): November is worth 20 of 30 days = 13.333333, so 6.666667 comes back
    # (-6.67, VAT -1.27); December 20.00 comes back in full (VAT -3.80).
    charged: dict[ChargedKey, int] = {(SUB, "monthly", OCT.start): 20_000_000,
                                      (SUB, "monthly", NOV.start): 20_000_000,
                                      (SUB, "monthly", DEC.start): 20_000_000}
    facts = AccountFacts(CUSTOMER, [sub(date(2026, 10, 1), date(2026, 11, 21))], [], charged)
    bill = bill_account(terms(offer(), period=DEC, catch_up=(OCT, NOV)), facts)
    assert [(ln.coverage, ln.exact_micros, ln.net_micros, ln.tax_micros)
            for ln in bill.lines] == [(NOV, -6_666_667, -6_670_000, -1_270_000),
                                      (DEC, -20_000_000, -20_000_000, -3_800_000)]
    assert "period billed before; credit" in bill.lines[0].description
    assert bill.total_micros == -31_740_000


def test_catching_up_an_earlier_cycle_gets_that_cycles_discount() -> None:
    # 50 % off the first cycle. The start is back-dated to 16 November after November's
    # bill: billed in time, November's bill (cycle 1) would have charged November 10.00 and
    # December 20.00 at half price. December's bill gives cycle 1 its discount (-15.00);
    # January (cycle 2) is charged in full.
    catalog = offer(discounts=[{"name": "welcome", "percent": "50", "cycles": 1}])
    bill = bill_account(terms(catalog, period=DEC, catch_up=(OCT, NOV)),
                        AccountFacts(CUSTOMER, [sub(date(2026, 11, 16))], [], {}))
    assert [(ln.kind, ln.coverage, ln.net_micros) for ln in bill.lines] == [
        (LineKind.RECURRING, NOV, 10_000_000), (LineKind.RECURRING, DEC, 20_000_000),
        (LineKind.RECURRING, DEC.next(), 20_000_000), (LineKind.DISCOUNT, NOV, -15_000_000)]


def test_a_fixed_discount_is_not_given_twice_for_a_cycle() -> None:
    # 5.00 off every cycle, in arrears. November's bill charged 10 of 30 days (6.666667) and
    # took 5.00 off; the start is then back-dated to 1 November: the catch-up of 13.333333
    # gets no second 5.00; December's own cycle does.
    catalog = offer(timing="inArrears", discounts=[{"name": "loyal", "fixed": "5"}])
    charged: dict[ChargedKey, int] = {(SUB, "monthly", NOV.start): 6_666_667}
    bill = bill_account(terms(catalog, period=DEC, catch_up=(OCT, NOV)),
                        AccountFacts(CUSTOMER, [sub(date(2026, 11, 1))], [], charged))
    assert [(ln.kind, ln.coverage, ln.exact_micros) for ln in bill.lines] == [
        (LineKind.RECURRING, NOV, 13_333_333), (LineKind.RECURRING, DEC, 20_000_000),
        (LineKind.DISCOUNT, None, -5_000_000)]


DAY0 = date(2026, 8, 20)
SEP = OCT.previous()


def _terms_of(started: int | None, days: int | None) -> list[SubscriptionTerms]:
    if started is None:
        return []
    start = DAY0 + timedelta(days=started)
    return [sub(start, None if days is None else start + timedelta(days=days))]


@given(
    fee=st.integers(1, 100_000_000),
    timing=st.sampled_from(["inAdvance", "inArrears"]),
    proration=st.sampled_from(["daily", "none"]),
    before=st.tuples(st.none() | st.integers(0, 100), st.none() | st.integers(0, 90)),
    after=st.tuples(st.integers(0, 100), st.none() | st.integers(0, 90)),
)
def test_after_a_catch_up_each_billed_period_holds_what_the_facts_say(
        fee: int, timing: str, proration: str, before: tuple[int | None, int | None],
        after: tuple[int, int | None]) -> None:
    """September and October were billed on what was known then (`before`; None: the
    subscription was not entered yet); then its start and end change (`after`, back-dated
    or not) and November is billed with September and October looked at again. Every
    coverage period billed so far has then been charged exactly what the new facts say it
    costs, and billing November again changes nothing."""
    amount = f"{fee // 1_000_000}.{fee % 1_000_000:06d}"
    catalog = offer(amount=amount, timing=timing, proration=proration)
    fee_terms = catalog.offers["plan"].recurring[0]
    old = _terms_of(*before)
    first = bill_account(terms(catalog, period=SEP), AccountFacts(CUSTOMER, old, [], {}))
    second = bill_account(terms(catalog, period=OCT, catch_up=(SEP,)),
                          AccountFacts(CUSTOMER, old, [], charged_by(first)))
    new = _terms_of(*after)
    november = terms(catalog, period=NOV, catch_up=(SEP, OCT))
    third = bill_account(november, AccountFacts(CUSTOMER, new, [], charged_by(first, second)))
    charged = charged_by(first, second, third)
    for coverage in (SEP, OCT, NOV) + ((DEC,) if timing == "inAdvance" else ()):
        due = fee_for(fee_terms, coverage, new[0].active_days(coverage.start, coverage.end))
        assert charged.get((SUB, "monthly", coverage.start), 0) == due, coverage
    assert bill_account(november, AccountFacts(CUSTOMER, new, [], charged)).lines == ()
