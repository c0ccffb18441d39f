"""Money as integers of micro-units (10^-6 of a currency's major unit).

Invariants: amounts are `int`, never `float`; currencies never mix silently; the only rounding
to a currency's minor unit happens in :func:`round_to_minor`, half-even, at invoice lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import iso4217

MICROS_PER_UNIT = 1_000_000



def _exponents() -> dict[str, int]:
    """ISO 4217 minor-unit exponents from the `iso4217` package (the standard's own table);
    codes without a minor unit (gold, testing codes) are not money we charge in."""
    return {c.code: c.exponent for c in iso4217.Currency if c.exponent is not None}


_EXPONENTS = _exponents()
ISO_4217_CODES: frozenset[str] = frozenset(_EXPONENTS)


class MoneyError(ValueError):
    """A money value or operation that the rules forbid (float, mixed currency, bad code)."""


def currency_exponent(currency: str) -> int:
    """ISO 4217 exponent of `currency` (EUR 2, JPY 0, BHD 3)."""
    check_currency(currency)
    return _EXPONENTS[currency]


def check_currency(currency: str) -> str:
    if currency not in ISO_4217_CODES:
        raise MoneyError(f"{currency!r} is not an ISO 4217 currency code")
    return currency


def parse_micros(value: str | int) -> int:
    """Parse a decimal amount in major units ("19.99", 5) into micro-units, exactly.

    Floats are refused: a YAML `0.1` must be written as the string "0.1".
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MoneyError(
            f"amount must be a decimal string or an integer, not {type(value).__name__}")
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise MoneyError(f"{value!r} is not a decimal amount") from exc
    if not amount.is_finite():
        raise MoneyError(f"{value!r} is not a finite amount")
    micros = amount * MICROS_PER_UNIT
    if micros != micros.to_integral_value():
        raise MoneyError(f"{value!r} has more than 6 decimal places")
    return int(micros)


def format_micros(micros: int) -> str:
    """Render micro-units as an exact decimal string in major units ("19.990000" → "19.99")."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    frac_txt = f"{frac:06d}".rstrip("0")
    return f"{sign}{whole}.{frac_txt}" if frac_txt else f"{sign}{whole}"


def div_round_half_even(numerator: int, denominator: int) -> int:
    """Integer division rounded half-even; the one place sub-micro remainders are resolved."""
    if denominator <= 0:
        raise MoneyError("denominator must be positive")
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient


def round_to_minor(micros: int, currency: str) -> int:
    """Round micro-units to the currency's minor unit, half-even; result still in micro-units."""
    step: int = 10 ** (6 - currency_exponent(currency))
    return div_round_half_even(micros, step) * step


@dataclass(frozen=True, slots=True)
class Money:
    """An amount of one currency in micro-units."""

    micros: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.micros, bool) or not isinstance(self.micros, int):
            raise MoneyError(f"micros must be int, not {type(self.micros).__name__}")
        check_currency(self.currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise MoneyError(f"cannot mix {self.currency} and {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.micros + other.micros, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.micros - other.micros, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.micros, self.currency)

    def rounded(self) -> Money:
        """Rounded half-even to the currency's minor unit (for invoice lines only)."""
        return Money(round_to_minor(self.micros, self.currency), self.currency)

    def __str__(self) -> str:
        exponent = currency_exponent(self.currency)
        text = format_micros(self.micros)
        whole, _, frac = text.partition(".")
        if len(frac) < exponent:
            frac = frac.ljust(exponent, "0")
        return f"{whole}.{frac} {self.currency}" if frac else f"{whole} {self.currency}"
