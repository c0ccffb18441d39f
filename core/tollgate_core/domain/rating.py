"""Rating one usage event: allowances first, then graduated usage tiers.

Pure and exact: amounts are integer micro-units; the only rounding is of each tier piece's
sub-micro remainder (half-even), so a split never moves a total by more than one micro per piece.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tollgate_core.domain.catalog import Tier, UsageTariff
from tollgate_core.domain.money import div_round_half_even
from tollgate_core.resources.offer import Period


@dataclass(frozen=True, slots=True)
class AllowanceBucket:
    """Remaining units of one allowance of one subscription in one period."""

    subscription_id: uuid.UUID
    allowance: str
    period_start: date
    quantity: int
    used: int
    reserved: int = 0
    """Units held by pending online-charging reservations."""

    @property
    def remaining(self) -> int:
        return max(self.quantity - self.used - self.reserved, 0)


@dataclass(frozen=True, slots=True)
class AllowanceDraw:
    subscription_id: uuid.UUID
    allowance: str
    period_start: date
    units: int


@dataclass(frozen=True, slots=True)
class TierCharge:
    tier_index: int
    units: int
    amount_micros: int


@dataclass(frozen=True, slots=True)
class Rating:
    """The outcome of rating one event."""

    draws: tuple[AllowanceDraw, ...]
    chargeable_units: int
    tier_charges: tuple[TierCharge, ...]
    price_name: str | None

    @property
    def amount_micros(self) -> int:
        return sum(c.amount_micros for c in self.tier_charges)


def period_start(when: datetime, period: Period, timezone: str) -> date:
    """Start of the calendar period holding `when`, in the tenant's timezone."""
    local = when.astimezone(ZoneInfo(timezone)).date()
    if period is Period.DAY:
        return local
    if period is Period.WEEK:
        return local - timedelta(days=local.weekday())
    return local.replace(day=1)


def draw_allowances(quantity: int, buckets: list[AllowanceBucket]) -> tuple[AllowanceDraw, ...]:
    """Draw `quantity` from buckets in order until covered or the buckets are empty."""
    draws = []
    left = quantity
    for bucket in buckets:
        if left == 0:
            break
        take = min(left, bucket.remaining)
        if take:
            draws.append(AllowanceDraw(bucket.subscription_id, bucket.allowance,
                                       bucket.period_start, take))
            left -= take
    return tuple(draws)


def chargeable(units: int, tariff: UsageTariff) -> int:
    """Round units up to the tariff increment and apply its per-event minimum."""
    if units == 0:
        return 0
    rounded = -(-units // tariff.increment) * tariff.increment
    return max(rounded, tariff.minimum)


def price_tiers(tiers: tuple[Tier, ...], already_paid: int, units: int) -> tuple[TierCharge, ...]:
    """Graduated tiers: the units occupy [already_paid, already_paid + units) of the period."""
    charges = []
    position = already_paid
    end = already_paid + units
    for index, tier in enumerate(tiers):
        if position >= end:
            break
        tier_end = end if tier.end is None else min(tier.end, end)
        if tier_end <= position:
            continue
        piece = tier_end - position
        charges.append(TierCharge(index, piece, div_round_half_even(piece * tier.price_micros,
                                                                    tier.per)))
        position = tier_end
    return tuple(charges)


def rate(quantity: int, buckets: list[AllowanceBucket], tariff: UsageTariff | None,
         already_paid: int) -> Rating | None:
    """Rate a quantity; None when units are left over and no tariff prices them."""
    draws = draw_allowances(quantity, buckets)
    left = quantity - sum(d.units for d in draws)
    if left == 0:
        return Rating(draws, 0, (), tariff.price_name if tariff else None)
    if tariff is None:
        return None
    units = chargeable(left, tariff)
    return Rating(draws, units, price_tiers(tariff.tiers, already_paid, units), tariff.price_name)
