"""Bill cycles, proration, discounts, taxes and rounding: worked examples computed by hand,
and properties of the ledger legs a bill posts."""

from __future__ import annotations

import uuid
from datetime import date
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tollgate_core.domain.billing import (
    AccountFacts,
    Accounts,
    BillingTerms,
    BillPeriod,
    ChargedKey,
    LineKind,
    SubscriptionTerms,
    TaxTerms,
    UsageTotal,
    bill_account,
    bill_legs,
    finish_line,
    period_containing,
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
          currency: str = "EUR") -> BillingTerms:
    return BillingTerms(currency, "Europe/Berlin", period, {1: catalog}, {tax.category: tax})


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
