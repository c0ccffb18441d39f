"""Rating one usage event: allowances first, then graduated usage tiers.

Pure and exact: amounts are integer micro-units; the only rounding is of each tier piece's
sub-micro remainder (half-even), so a split never moves a total by more than one micro per piece.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

from tollgate_core.domain.catalog import Band, Tier, UsageTariff
from tollgate_core.domain.money import div_round_half_even
from tollgate_core.resources.offer import Period, Unit

ONE = Fraction(1)


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
    band: str | None = None


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


def local_date(when: datetime, timezone: str) -> date:
    """The calendar day holding `when` in the tenant's timezone."""
    return when.astimezone(ZoneInfo(timezone)).date()


def period_start_of(local: date, period: Period) -> date:
    """Start of the calendar period holding the local day `local`."""
    if period is Period.DAY:
        return local
    if period is Period.WEEK:
        return local - timedelta(days=local.weekday())
    return local.replace(day=1)


def period_start(when: datetime, period: Period, timezone: str) -> date:
    """Start of the calendar period holding `when`, in the tenant's timezone."""
    return period_start_of(local_date(when, timezone), period)


def previous_period_start(start: date, period: Period) -> date:
    """Start of the period before the one starting at `start`."""
    if period is Period.DAY:
        return start - timedelta(days=1)
    if period is Period.WEEK:
        return start - timedelta(days=7)
    return (start - timedelta(days=1)).replace(day=1)


def draw_units(quantity: int, remaining: list[int]) -> list[int]:
    """Units taken from each bucket (given by what it has left), in order, until `quantity`
    is covered or the buckets are empty."""
    taken = []
    left = quantity
    for available in remaining:
        take = min(left, available) if available > 0 else 0
        taken.append(take)
        left -= take
    return taken


def draw_allowances(quantity: int, buckets: list[AllowanceBucket]) -> tuple[AllowanceDraw, ...]:
    """Draw `quantity` from buckets in order until covered or the buckets are empty."""
    taken = draw_units(quantity, [bucket.remaining for bucket in buckets])
    return tuple(AllowanceDraw(bucket.subscription_id, bucket.allowance, bucket.period_start,
                               take) for bucket, take in zip(buckets, taken, strict=True) if take)


def chargeable(units: int, tariff: UsageTariff) -> int:
    """Round units up to the tariff increment and apply its per-event minimum."""
    if units == 0:
        return 0
    rounded = -(-units // tariff.increment) * tariff.increment
    return max(rounded, tariff.minimum)


def price_tiers(tiers: tuple[Tier, ...], already_paid: int, units: int,
                factor: Fraction = ONE, band: str | None = None, volume: bool = False
                ) -> tuple[TierCharge, ...]:
    """The units occupy [already_paid, already_paid + units) of the period. Graduated: each
    part is priced by its tier; volume: all of them by the tier of the last unit.

    `factor` (band × zone × congestion multipliers) scales the tier prices exactly; each
    piece's sub-micro remainder is rounded half-even."""
    if volume and units > 0:
        last = already_paid + units - 1
        index, tier = next((i, t) for i, t in enumerate(tiers)
                           if t.end is None or last < t.end)
        return (TierCharge(index, units, div_round_half_even(
            units * tier.price_micros * factor.numerator, tier.per * factor.denominator), band),)
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
        amount = div_round_half_even(piece * tier.price_micros * factor.numerator,
                                     tier.per * factor.denominator)
        charges.append(TierCharge(index, piece, amount, band))
        position = tier_end
    return tuple(charges)


@dataclass(frozen=True, slots=True)
class When:
    """Where in time an event's usage falls: its start, in the tenant's timezone."""

    start: datetime
    timezone: str


def band_at(local: datetime, bands: tuple[Band, ...]) -> Band | None:
    minute = local.hour * 60 + local.minute
    for band in bands:
        if local.weekday() in band.days and band.start_minute <= minute < band.end_minute:
            return band
    return None


def _next_boundary_s(local: datetime, bands: tuple[Band, ...]) -> int:
    """Seconds from `local` to the next minute at which the band in force may change."""
    minute = local.hour * 60 + local.minute
    edges = [m for b in bands for m in (b.start_minute, b.end_minute) if m > minute]
    next_minute = min([*edges, 24 * 60])  # midnight: the weekday changes
    return (next_minute - minute) * 60 - local.second


def band_pieces(start: datetime, seconds: int, bands: tuple[Band, ...],
                timezone: str) -> list[tuple[int, Band | None]]:
    """Split `seconds` of usage from `start` at band boundaries: [(seconds, band)], in order."""
    zone = ZoneInfo(timezone)
    local = start.astimezone(zone).replace(microsecond=0)
    pieces: list[tuple[int, Band | None]] = []
    left = seconds
    while left > 0:
        band = band_at(local, bands)
        step = min(left, _next_boundary_s(local, bands))
        if pieces and pieces[-1][1] is band:
            pieces[-1] = (pieces[-1][0] + step, band)
        else:
            pieces.append((step, band))
        left -= step
        local = (local + timedelta(seconds=step)).astimezone(zone)
    return pieces


def rate(quantity: int, buckets: list[AllowanceBucket], tariff: UsageTariff | None,
         already_paid: int, when: When | None = None, factor: Fraction = ONE) -> Rating | None:
    """Rate a quantity; None when units are left over and no tariff prices them.

    Allowances cover the first units (the start of a call); the paid rest is rounded up to
    the tariff's increment, split at time-band boundaries (for seconds) and priced over the
    graduated tiers with each piece's band multiplier times `factor`."""
    draws = draw_allowances(quantity, buckets)
    drawn = sum(d.units for d in draws)
    left = quantity - drawn
    if left == 0:
        return Rating(draws, 0, (), tariff.price_name if tariff else None)
    if tariff is None:
        return None
    units, charges = price_paid(tariff, already_paid, drawn, left, when, factor)
    return Rating(draws, units, charges, tariff.price_name)


def price_paid(tariff: UsageTariff, already_paid: int, drawn: int, left: int,
               when: When | None = None, factor: Fraction = ONE
               ) -> tuple[int, tuple[TierCharge, ...]]:
    """Price the `left` units of an event that follow its `drawn` allowance-covered units:
    (chargeable units, tier charges). The second half of :func:`rate`, for callers that draw
    allowances for a whole batch before they lock and read the paid-usage counters."""
    units = chargeable(left, tariff)
    pieces = _paid_pieces(tariff, when, drawn, left, units)
    charges: list[TierCharge] = []
    position = already_paid
    for piece_units, band in pieces:
        band_factor = band.factor if band else ONE
        charges.extend(price_tiers(tariff.tiers, position, piece_units, factor * band_factor,
                                   band.name if band else None, tariff.volume))
        position += piece_units
    return units, tuple(charges)


def _paid_pieces(tariff: UsageTariff, when: When | None, drawn: int, left: int,
                 units: int) -> list[tuple[int, Band | None]]:
    """The paid units by band; rounding up (units - left) goes to the last piece."""
    if not tariff.bands or when is None:
        return [(units, None)]
    if tariff.unit is not Unit.SECONDS:
        local = when.start.astimezone(ZoneInfo(when.timezone))
        return [(units, band_at(local, tariff.bands))]
    pieces = band_pieces(when.start + timedelta(seconds=drawn), left, tariff.bands,
                         when.timezone)
    last_units, last_band = pieces[-1]
    pieces[-1] = (last_units + units - left, last_band)
    return pieces
