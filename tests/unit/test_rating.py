"""Rating: allowances before paid tiers, increments, graduated tiers, exact amounts."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from tollgate_core.domain.catalog import Band, Tier, UsageTariff
from tollgate_core.domain.rating import (
    AllowanceBucket,
    When,
    band_pieces,
    period_start,
    price_tiers,
    rate,
)
from tollgate_core.resources.offer import Period, Service, Unit

MIB = 1_048_576
GIB = 1024 * MIB
SUB = uuid.UUID(int=1)

# The example plan's data price: per started KiB; 0.01 EUR per MiB for the first GiB, then 0.005.
DATA = UsageTariff("data-payg", Service.DATA, Unit.BYTES, increment=1024, minimum=0, tiers=(
    Tier(0, GIB, 10_000, MIB), Tier(GIB, None, 5_000, MIB)))


def bucket(quantity: int, used: int = 0, name: str = "data-5gb") -> AllowanceBucket:
    return AllowanceBucket(SUB, name, date(2026, 11, 1), quantity, used)


def test_allowance_is_consumed_before_paid_tiers() -> None:
    rating = rate(3 * MIB, [bucket(5 * GIB)], DATA, already_paid=0)
    assert rating is not None
    assert [d.units for d in rating.draws] == [3 * MIB]
    assert rating.amount_micros == 0


def test_usage_beyond_allowance_is_charged_per_started_kib() -> None:
    # 1 MiB left in the allowance; the event uses 1 MiB + 1,500 bytes.
    # Paid: 1,500 bytes → rounded up to 2 KiB = 2,048 bytes.
    # 2,048 bytes × 10,000 micros / 1,048,576 = 19.53125 → 20 micros (half-even of .53 rounds up)
    rating = rate(MIB + 1_500, [bucket(5 * GIB, used=5 * GIB - MIB)], DATA, already_paid=0)
    assert rating is not None
    assert rating.draws[0].units == MIB
    assert rating.chargeable_units == 2_048
    assert rating.amount_micros == 20


def test_an_event_spanning_a_tier_boundary_is_split() -> None:
    # 100 MiB already paid this month would leave 924 MiB in tier 0; the event pays 1,000 MiB:
    # 924 MiB × 0.01 = 9.24 EUR, 76 MiB × 0.005 = 0.38 EUR → 9.62 EUR = 9,620,000 micros
    rating = rate(1000 * MIB, [], DATA, already_paid=100 * MIB)
    assert rating is not None
    assert [(c.tier_index, c.units) for c in rating.tier_charges] == [(0, 924 * MIB), (1, 76 * MIB)]
    assert rating.amount_micros == 9_620_000


def test_several_allowances_are_drawn_in_order() -> None:
    buckets = [bucket(MIB, name="boost"), bucket(2 * MIB, name="plan")]
    rating = rate(2 * MIB, buckets, DATA, already_paid=0)
    assert rating is not None
    assert [(d.allowance, d.units) for d in rating.draws] == [("boost", MIB), ("plan", MIB)]


def test_voice_per_minute_minimum_then_per_second() -> None:
    # 60 s minimum, then per second at 0.06 EUR per minute (per: 60 s)
    voice = UsageTariff("voice", Service.VOICE, Unit.SECONDS, increment=1, minimum=60,
                        tiers=(Tier(0, None, 60_000, 60),))
    short = rate(10, [], voice, already_paid=0)
    long = rate(61, [], voice, already_paid=0)
    assert short is not None and long is not None
    assert short.amount_micros == 60_000  # 60 s × 60,000 / 60
    assert long.amount_micros == 61_000  # 61 s × 60,000 / 60


def test_no_tariff_and_no_allowance_means_unratable() -> None:
    assert rate(10, [], None, already_paid=0) is None
    assert rate(0, [], None, already_paid=0) is not None


def test_period_is_the_tenant_local_calendar_month() -> None:
    # 23:30 UTC on 31 Oct is already 1 Nov in Berlin (UTC+1 in winter)
    when = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    assert period_start(when, Period.MONTH, "Europe/Berlin") == date(2026, 11, 1)
    assert period_start(when, Period.MONTH, "UTC") == date(2026, 10, 1)


tiers_strategy = st.lists(st.integers(min_value=1, max_value=10**7), min_size=1, max_size=4)


@given(bounds=tiers_strategy, prices=st.lists(st.integers(0, 10**6), min_size=5, max_size=5),
       per=st.integers(1, 10**6), paid=st.integers(0, 10**8), units=st.integers(0, 10**8),
       cut=st.integers(0, 10**8))
def test_splitting_an_event_moves_its_total_by_at_most_one_micro_per_piece(
        bounds: list[int], prices: list[int], per: int, paid: int, units: int, cut: int) -> None:
    edges = [0]
    for width in bounds:
        edges.append(edges[-1] + width)
    tiers = tuple(Tier(edges[i], edges[i + 1] if i + 1 < len(edges) else None, prices[i], per)
                  for i in range(len(edges)))
    cut = min(cut, units)
    whole = price_tiers(tiers, paid, units)
    first = price_tiers(tiers, paid, cut)
    second = price_tiers(tiers, paid + cut, units - cut)
    pieces = len(whole) + len(first) + len(second)
    total_whole = sum(c.amount_micros for c in whole)
    total_split = sum(c.amount_micros for c in first + second)
    assert abs(total_whole - total_split) <= pieces
    assert sum(c.units for c in whole) == units


# Time bands, roaming zones: voice at 0.06 EUR per minute, charged per second
# (60,000 micros per 60 s = 1,000 micros a second at 100 %).
BERLIN = "Europe/Berlin"
PEAK = Band("peak", frozenset(range(7)), 8 * 60, 18 * 60, Fraction(1))
EVENING = Band("evening", frozenset(range(7)), 18 * 60, 24 * 60, Fraction(1, 2))
VOICE = UsageTariff("voice", Service.VOICE, Unit.SECONDS, increment=1, minimum=0,
                    tiers=(Tier(0, None, 60_000, 60),), bands=(PEAK, EVENING),
                    zones={"eu": Fraction(2)})
# 17:55 in Berlin on Monday 2 Nov 2026 (UTC+1)
AT_1755 = datetime(2026, 11, 2, 16, 55, tzinfo=UTC)


def test_a_call_across_a_band_boundary_is_split_at_it() -> None:
    # 10 minutes from 17:55: 300 s at peak (300 × 1,000 = 300,000) and 300 s in the evening
    # band at 50 % (300 × 500 = 150,000) → 450,000 micros.
    rating = rate(600, [], VOICE, 0, When(AT_1755, BERLIN))
    assert rating is not None
    assert [(c.band, c.units, c.amount_micros) for c in rating.tier_charges] == [
        ("peak", 300, 300_000), ("evening", 300, 150_000)]


def test_the_allowance_covers_the_start_of_the_call() -> None:
    # 6 free minutes from 17:55 reach 18:01; the paid 4 minutes are all evening:
    # 240 s × 500 = 120,000 micros.
    rating = rate(600, [AllowanceBucket(SUB, "voice", date(2026, 11, 1), 360, 0)], VOICE, 0,
                  When(AT_1755, BERLIN))
    assert rating is not None
    assert rating.amount_micros == 120_000


def test_roaming_zone_and_congestion_multiply_the_price() -> None:
    # 60 s at peak in zone "eu" (200 %) at high congestion (150 %): 60 × 1,000 × 2 × 1.5
    rating = rate(60, [], VOICE, 0, When(AT_1755 - timedelta(hours=2), BERLIN),
                  factor=VOICE.zones["eu"] * Fraction(3, 2))
    assert rating is not None
    assert rating.amount_micros == 180_000


def test_outside_every_band_the_tariff_price_applies() -> None:
    # 07:00 is before the peak band: 100 % → 60 s × 1,000
    rating = rate(60, [], VOICE, 0, When(datetime(2026, 11, 2, 6, 0, tzinfo=UTC), BERLIN))
    assert rating is not None
    assert rating.amount_micros == 60_000
    assert rating.tier_charges[0].band is None


@given(start_s=st.integers(0, 7 * 86_400), seconds=st.integers(1, 3 * 86_400))
def test_band_pieces_cover_the_call_exactly(start_s: int, seconds: int) -> None:
    start = datetime(2026, 3, 28, tzinfo=UTC) + timedelta(seconds=start_s)  # spans a DST change
    pieces = band_pieces(start, seconds, (PEAK, EVENING), BERLIN)
    assert sum(units for units, _ in pieces) == seconds
    assert all(units > 0 for units, _ in pieces)


# Volume tiers: 2.00 per unit below 100 units a month, 1.00 from the 100th on.
VOLUME = UsageTariff("api-volume", Service.API, Unit.EVENTS, increment=1, minimum=0, tiers=(
    Tier(0, 100, 2_000_000, 1), Tier(100, None, 1_000_000, 1)), volume=True)


def test_volume_tiers_price_the_whole_event_by_the_tier_it_reaches() -> None:
    # 90 units paid before; this event's 20 units take the month to 110, in the second tier:
    # 20 × 1.00 = 20.00 (graduated would be 10 × 2.00 + 10 × 1.00 = 30.00).
    rating = rate(20, [], VOLUME, already_paid=90)
    assert rating is not None
    assert [(c.tier_index, c.units) for c in rating.tier_charges] == [(1, 20)]
    assert rating.amount_micros == 20_000_000
    below = rate(9, [], VOLUME, already_paid=90)  # ends at the 99th unit: 9 × 2.00
    assert below is not None and below.amount_micros == 18_000_000


@given(requested=st.integers(1, 400), spendable=st.integers(0, 500_000_000),
       already=st.integers(0, 150), increment=st.sampled_from([1, 7, 60]))
def test_an_online_grant_never_costs_more_than_is_spendable_even_with_volume_tiers(
        requested: int, spendable: int, already: int, increment: int) -> None:
    """Volume prices are not monotone in units (just below a boundary is dearer), yet the
    grant's price always fits the spendable money."""
    from tollgate_core.domain.online import decide_grant, pricer

    grant = decide_grant(requested, [], pricer(VOLUME, already, None), spendable, increment)
    assert grant.amount_micros <= spendable
    assert grant.units <= requested
