"""Statement arithmetic: minimum guarantee and cap, exact FX conversion rounded half-even at
the settlement currency's ISO 4217 exponent, settlement periods in the tenant's timezone."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_catalog import example_source
from tollgate_core.domain.settlement import (
    AdjustmentKind,
    ApiCharges,
    ApiLine,
    NetDirection,
    PeriodKind,
    SettlementError,
    StatementHeader,
    Totals,
    bound_share,
    compile_terms,
    convert,
    day_period,
    decimal_text,
    month_period,
    parse_period,
    parse_rate,
    periods_for,
    render_statement,
    statement_figures,
    statement_id,
)

EUR = 1_000_000


def test_minimum_guarantee_tops_up_and_cap_claws_back() -> None:
    # The operator pays: 18,836 micros earned, minimum 50,000 → top-up 31,164.
    assert bound_share(18_836, 1, 50_000, None) == (31_164, AdjustmentKind.MINIMUM_GUARANTEE)
    # 23,360 earned, cap 20,000 → 3,360 clawed back.
    assert bound_share(23_360, 1, None, 20_000) == (-3_360, AdjustmentKind.CAP)
    # Within the bounds, or exactly on one: nothing.
    assert bound_share(30_000, 1, 20_000, 40_000) == (0, None)
    assert bound_share(20_000, 1, 20_000, 40_000) == (0, None)
    # A cap below the minimum wins.
    assert bound_share(0, 1, 50_000, 10_000) == (10_000, AdjustmentKind.CAP)
    # The partner pays (share −100): at least 500 paid → the partner owes 400 more; at most
    # 60 → 40 returned to it.
    assert bound_share(-100, -1, 500, None) == (-400, AdjustmentKind.MINIMUM_GUARANTEE)
    assert bound_share(-100, -1, None, 60) == (40, AdjustmentKind.CAP)


def test_conversion_rounds_half_even_at_the_iso_4217_exponent() -> None:
    # 1.5 JPY → 2, 2.5 JPY → 2 (exponent 0, half to even)
    assert convert(1_500_000, Fraction(1), "JPY") == 2_000_000
    assert convert(2_500_000, Fraction(1), "JPY") == 2_000_000
    # 0.125 EUR → 0.12; 0.135 → 0.14 (exponent 2)
    assert convert(125_000, Fraction(1), "EUR") == 120_000
    assert convert(135_000, Fraction(1), "EUR") == 140_000
    # BHD has 3 decimals: 10 EUR × 0.41234 = 4.1234 BHD → 4.123
    assert convert(10 * EUR, parse_rate("0.41234"), "BHD") == 4_123_000
    # 23,360 micros EUR × 1.0825 = 25,287.2 micros USD → 0.03 USD
    assert convert(23_360, parse_rate("1.0825"), "USD") == 30_000
    # negative amounts round the same way
    assert convert(-2_500_000, Fraction(1), "JPY") == -2_000_000
    assert convert(-125_000, Fraction(1), "EUR") == -120_000


@pytest.mark.parametrize("text", ["0", "-1.2", "abc", "NaN", "Infinity", ""])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(SettlementError):
        parse_rate(text)


def test_a_float_rate_is_refused() -> None:
    with pytest.raises(SettlementError, match="decimal string"):
        parse_rate(1.08)  # type: ignore[arg-type]


@given(st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("100000"), places=6))
def test_rates_round_trip_exactly(value: Decimal) -> None:
    rate = parse_rate(str(value))
    assert rate == Fraction(value)
    assert parse_rate(decimal_text(rate)) == rate


@given(gross=st.integers(0, 10**13), share=st.integers(-10**12, 10**12),
       minimum=st.none() | st.integers(0, 10**12), cap=st.none() | st.integers(0, 10**12),
       rate=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000"), places=4),
       currency=st.sampled_from(["EUR", "USD", "JPY", "BHD", "CHF"]))
def test_settlement_lines_add_up(gross: int, share: int, minimum: int | None,
                                 cap: int | None, rate: Decimal, currency: str) -> None:
    terms = compile_terms("streamflix", example_source().partners["streamflix"])
    terms = replace(terms, minimum_micros=minimum, cap_micros=cap,
                    settlement_currency=currency)
    figures = statement_figures(terms, Totals(3, gross, share), Fraction(rate))
    # ledger: payable = share + adjustment, operator = gross − share
    assert figures.payable_micros == figures.share_micros + figures.adjustment_micros
    assert figures.operator_micros + figures.share_micros == gross
    if minimum is not None and (cap is None or minimum <= cap):
        assert figures.payable_micros >= minimum
    if cap is not None:
        assert figures.payable_micros <= cap
    # settlement currency: whole minor units, and the lines still add up
    step = {"EUR": 10_000, "USD": 10_000, "JPY": 1_000_000, "BHD": 1_000, "CHF": 10_000}
    for amount in (figures.settled_gross_micros, figures.settled_share_micros,
                   figures.settled_payable_micros):
        assert amount % step[currency] == 0
    assert figures.settled_share_micros + figures.settled_adjustment_micros \
        == figures.settled_payable_micros
    assert figures.settled_operator_micros + figures.settled_share_micros \
        == figures.settled_gross_micros
    # each converted line is within half a minor unit of its exact value
    exact = Fraction(figures.payable_micros) * Fraction(rate)
    assert abs(figures.settled_payable_micros - exact) <= Fraction(step[currency], 2)


def test_an_agreement_out_of_force_is_not_bounded() -> None:
    terms = compile_terms("streamflix", example_source().partners["streamflix"])
    terms = replace(terms, minimum_micros=50 * EUR)
    assert statement_figures(terms, Totals(0, 0, 0), Fraction(1)).payable_micros == 50 * EUR
    assert statement_figures(terms, Totals(0, 0, 0), Fraction(1),
                             bounded=False).payable_micros == 0


def test_periods() -> None:
    november = parse_period("2026-11")
    assert (november.kind, november.start, november.end) == (
        PeriodKind.MONTHLY, date(2026, 11, 1), date(2026, 12, 1))
    assert parse_period("2026-12").end == date(2027, 1, 1)
    assert parse_period("2026-11-05") == day_period(date(2026, 11, 5))
    for bad in ("2026-13", "2026-11-31", "Nov 2026", "2026-1"):
        with pytest.raises(SettlementError):
            parse_period(bad)
    # a month asked: one monthly statement, or one daily statement per day (Feb 2028: 29)
    assert periods_for(PeriodKind.MONTHLY, november) == [november]
    daily = periods_for(PeriodKind.DAILY, parse_period("2028-02"))
    assert len(daily) == 29
    assert daily[0] == day_period(date(2028, 2, 1))
    # a day asked: no monthly statement
    assert periods_for(PeriodKind.MONTHLY, parse_period("2026-11-05")) == []
    # local midnights: October 2026 in Berlin starts in summer time and ends in winter time
    start, end = month_period(date(2026, 10, 1)).bounds("Europe/Berlin")
    assert start == datetime(2026, 9, 30, 22, tzinfo=UTC)
    assert end == datetime(2026, 10, 31, 23, tzinfo=UTC)


def test_statement_ids_are_one_per_agreement_and_period() -> None:
    october = parse_period("2026-10")
    first_day = day_period(date(2026, 10, 1))
    assert statement_id("de", "a", october) == statement_id("de", "a", october)
    ids = {statement_id("de", "a", october), statement_id("de", "b", october),
           statement_id("fr", "a", october), statement_id("de", "a", first_day)}
    assert len(ids) == 4


def test_rendered_statement_is_plain_json_with_exact_amounts() -> None:
    source = example_source()
    spec = source.partners["streamflix"]
    terms = replace(compile_terms("streamflix", spec), settlement_currency="USD",
                    cap_micros=20_000)
    totals = Totals(3, 150_700, 23_360, carried_records=1, carried_share_micros=2_124)
    figures = statement_figures(terms, totals, parse_rate("1.0825"))
    sid = uuid.UUID(int=7)
    header = StatementHeader("de", sid, "streamflix", spec, parse_period("2026-10"),
                             "Europe/Berlin", 4, "EUR", datetime(2026, 11, 2, tzinfo=UTC))
    body = render_statement(header, terms, totals, figures, [uuid.UUID(int=9)])
    assert json.loads(json.dumps(body)) == body
    assert body["ledger"]["partnerShare"] == {"amountMicros": 23_360, "amount": "0.02336",
                                              "currency": "EUR"}
    assert body["ledger"]["adjustment"]["amountMicros"] == -3_360
    assert body["ledger"]["adjustmentKind"] == "cap"
    assert body["ledger"]["payable"]["amount"] == "0.02"
    # 0.1507 EUR × 1.0825 = 0.16313… → 0.16 USD; share 0.02528… → 0.03; payable 0.021650
    # → 0.02; adjustment and operator lines are the differences.
    assert body["settlement"]["fxRate"] == "1.0825"
    assert [body["settlement"][k]["amount"] for k in
            ("gross", "partnerShare", "adjustment", "payable", "operatorShare")] == [
        "0.16", "0.03", "-0.01", "0.02", "0.13"]
    assert body["period"] == {"kind": "monthly", "label": "2026-10", "start": "2026-10-01",
                              "end": "2026-11-01", "timezone": "Europe/Berlin"}
    assert body["carriedFromEarlierPeriods"]["records"] == 1
    assert body["transfers"] == [str(uuid.UUID(int=9))]


@given(share=st.integers(-10**12, 10**12), api=st.integers(0, 10**12),
       rate=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000"), places=4),
       currency=st.sampled_from(["EUR", "USD", "JPY", "BHD"]))
def test_network_api_charges_net_against_the_payable(share: int, api: int, rate: Decimal,
                                                     currency: str) -> None:
    terms = compile_terms("streamflix", example_source().partners["streamflix"])
    terms = replace(terms, minimum_micros=None, cap_micros=None,
                    settlement_currency=currency)
    charges = ApiCharges((ApiLine("qod", 3, api),))
    figures = statement_figures(terms, Totals(1, 0, share), Fraction(rate), api=charges)
    # The bounds never touch the charges; net = payable − charges, in both currencies.
    assert figures.network_api_micros == api
    assert figures.net_micros == figures.payable_micros - api
    assert figures.settled_net_micros == (figures.settled_payable_micros
                                          - figures.settled_network_api_micros)
    exact = Fraction(api) * Fraction(rate)
    step = {"EUR": 10_000, "USD": 10_000, "JPY": 1_000_000, "BHD": 1_000}[currency]
    assert figures.settled_network_api_micros % step == 0
    assert abs(figures.settled_network_api_micros - exact) <= Fraction(step, 2)
    direction = figures.net_direction
    assert (direction is NetDirection.OPERATOR_PAYS_PARTNER) == (figures.settled_net_micros > 0)
    assert (direction is NetDirection.PARTNER_PAYS_OPERATOR) == (figures.settled_net_micros < 0)


def test_a_minimum_guarantee_is_of_the_share_not_of_the_net() -> None:
    # Share 18,836, minimum 50,000 → payable 50,000; API charges 70,000 → net −20,000.
    terms = replace(compile_terms("streamflix", example_source().partners["streamflix"]),
                    minimum_micros=50_000)
    charges = ApiCharges((ApiLine("location", 1, 20_000), ApiLine("qod", 4, 50_000)),
                         carried_calls=1, carried_micros=10_000)
    figures = statement_figures(terms, Totals(3, 150_700, 18_836), Fraction(1), api=charges)
    assert (figures.adjustment_micros, figures.payable_micros) == (31_164, 50_000)
    assert (figures.network_api_micros, figures.net_micros) == (70_000, -20_000)
    header = StatementHeader("de", uuid.UUID(int=7), "streamflix",
                             example_source().partners["streamflix"], parse_period("2026-10"),
                             "Europe/Berlin", 4, "EUR", datetime(2026, 11, 2, tzinfo=UTC))
    body = render_statement(header, terms, Totals(3, 150_700, 18_836), figures, [], charges)
    assert json.loads(json.dumps(body)) == body
    assert body["version"] == 2
    assert [body["ledger"][k]["amount"] for k in ("payable", "networkApiCharges", "net")] == [
        "0.05", "0.07", "-0.02"]
    assert body["networkApis"]["calls"] == 5
    assert [(a["api"], a["calls"], a["charges"]["amountMicros"])
            for a in body["networkApis"]["byApi"]] == [("location", 1, 20_000),
                                                       ("qod", 4, 50_000)]
    assert body["networkApis"]["carriedFromEarlierPeriods"]["calls"] == 1
    assert body["settlement"]["netDirection"] == "partnerPaysOperator"
