"""Online (prepaid) charging decisions, shaped after 3GPP Nchf / Diameter Gy: how many units to
grant for a reservation, and what a commit costs. Pure; the store does the locking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from fractions import Fraction
from typing import Generic, TypeVar

from tollgate_core.domain.catalog import UsageTariff
from tollgate_core.domain.rating import (
    ONE,
    AllowanceBucket,
    AllowanceDraw,
    When,
    draw_allowances,
    rate,
)
from tollgate_core.resources.offer import Unit

K = TypeVar("K")


class ResultCode(StrEnum):
    """Outcome of an online-charging request (names after Diameter Result-Code values)."""

    SUCCESS = "SUCCESS"  # 2001
    CREDIT_LIMIT_REACHED = "CREDIT_LIMIT_REACHED"  # 4012: nothing can be granted
    USER_UNKNOWN = "USER_UNKNOWN"  # 5030: no active subscription for the line
    RATING_FAILED = "RATING_FAILED"  # 5031: no offer or price covers the service
    INVALID_REQUEST = "INVALID_REQUEST"  # 5004/5005: a field is missing or breaks its rule
    UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"  # 5002: session/reservation not found
    RESERVATION_CLOSED = "RESERVATION_CLOSED"  # already committed, released or expired
    UNABLE_TO_COMPLY = "UNABLE_TO_COMPLY"  # 5012: the engine cannot decide now


@dataclass(frozen=True, slots=True)
class Grant:
    units: int
    draws: tuple[AllowanceDraw, ...]
    paid_units: int
    amount_micros: int


Price = Callable[[int], int]
"""What `units` paid units cost (tiers from the period's paid position, bands, factors)."""
PriceAfter = Callable[[int], Price]
"""The price of paid units that follow `drawn` allowance-covered units (bands move on)."""


def pricer(tariff: UsageTariff, already_paid: int, when: When | None,
           factor: Fraction = ONE) -> PriceAfter:
    def after(drawn: int) -> Price:
        start = when
        if when is not None and tariff.unit is Unit.SECONDS:
            start = When(when.start + timedelta(seconds=drawn), when.timezone)

        def price(units: int) -> int:
            rating = rate(units, [], tariff, already_paid, start, factor)
            assert rating is not None
            return rating.amount_micros
        return price
    return after


def decide_grant(requested: int, buckets: list[AllowanceBucket],
                 price_after: PriceAfter | None, spendable_micros: int | None,
                 increment: int = 1) -> Grant:
    """Grant as many of `requested` units as allowances plus spendable money cover.

    Allowances first; then the largest number of paid units whose price fits the spendable
    money (price is monotone in units, so a binary search finds it). `spendable_micros` None
    means no floor (postpaid): everything requested is granted.
    """
    draws = draw_allowances(requested, buckets)
    drawn = sum(d.units for d in draws)
    left = requested - drawn
    if left == 0 or price_after is None:
        return Grant(drawn, draws, 0, 0)
    price = price_after(drawn)
    if spendable_micros is None or price(left) <= spendable_micros:
        return Grant(requested, draws, left, price(left))
    low, high = 0, left  # invariant: price(low) fits, price(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if price(middle) <= spendable_micros:
            low = middle
        else:
            high = middle
    if increment > 1:  # grant whole increments only; a partial one would be paid in full
        low -= low % increment
    # Volume tiers are not monotone (fewer units can fall into a dearer tier): step down
    # until the grant fits, so a grant never exceeds the spendable money.
    while low > 0 and price(low) > spendable_micros:
        low -= increment
    low = max(low, 0)
    return Grant(drawn + low, draws, low, price(low))


@dataclass(frozen=True, slots=True)
class Settlement(Generic[K]):
    """What a commit of `used` units of a reservation posts."""

    draws: tuple[tuple[K, int], ...]  # (allowance bucket, units) drawn
    paid_units: int
    amount_micros: int


def settle(used: int, reserved_allowance: list[tuple[K, int]],
           price_after: PriceAfter | None) -> Settlement[K]:
    """Used units come out of the reserved allowance first; the rest is priced now."""
    left = used
    draws = []
    for bucket, units in reserved_allowance:
        take = min(left, units)
        if take:
            draws.append((bucket, take))
            left -= take
    if left == 0 or price_after is None:
        return Settlement(tuple(draws), 0, 0)
    return Settlement(tuple(draws), left, price_after(used - left)(left))
