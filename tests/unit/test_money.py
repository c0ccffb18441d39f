"""Money: exact micro-units, ISO 4217 exponents, half-even rounding only where asked."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate_core.domain.money import (
    Money,
    MoneyError,
    currency_exponent,
    div_round_half_even,
    format_micros,
    parse_micros,
    round_to_minor,
)


def test_parse_is_exact() -> None:
    assert parse_micros("19.99") == 19_990_000
    assert parse_micros("0.000001") == 1
    assert parse_micros(5) == 5_000_000


@pytest.mark.parametrize("bad", [0.1, "1.0000001", "abc", "NaN", True])
def test_parse_refuses_floats_and_excess_precision(bad: object) -> None:
    with pytest.raises(MoneyError):
        parse_micros(bad)  # type: ignore[arg-type]


def test_exponents_follow_iso_4217() -> None:
    exponents = [currency_exponent(c) for c in ("EUR", "JPY", "BHD")]
    assert exponents == [2, 0, 3]
    with pytest.raises(MoneyError):
        currency_exponent("EUX")


def test_round_to_minor_is_half_even_per_currency() -> None:
    # EUR minor unit is 10_000 micros: 0.125 → 0.12 (tie to even), 0.135 → 0.14
    assert round_to_minor(125_000, "EUR") == 120_000
    assert round_to_minor(135_000, "EUR") == 140_000
    # JPY has no minor unit: 2.5 → 2, 3.5 → 4
    assert round_to_minor(2_500_000, "JPY") == 2_000_000
    assert round_to_minor(3_500_000, "JPY") == 4_000_000
    # BHD has three decimals: 0.0005 → 0.000
    assert round_to_minor(500, "BHD") == 0


def test_money_never_mixes_currencies() -> None:
    with pytest.raises(MoneyError):
        _ = Money(1, "EUR") + Money(1, "USD")
    assert str(Money(19_990_000, "EUR")) == "19.99 EUR"
    assert str(Money(5_000_000, "JPY")) == "5 JPY"


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_format_and_parse_round_trip(micros: int) -> None:
    text = format_micros(micros)
    assert parse_micros(text.lstrip("-")) * (-1 if micros < 0 else 1) == micros


@given(st.integers(min_value=0, max_value=10**18), st.integers(min_value=1, max_value=10**9))
def test_half_even_division_is_within_half_a_unit(numerator: int, denominator: int) -> None:
    q = div_round_half_even(numerator, denominator)
    assert abs(q * denominator - numerator) * 2 <= denominator
