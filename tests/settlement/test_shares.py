"""Revenue-share splitting: operator + partners = gross for every record, each share within one
micro of its exact value, deterministic (ADR 0012)."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_catalog import example_source
from tollgate_core.domain.catalog import CatalogSource, compile_catalog
from tollgate_core.domain.settlement import (
    OPERATOR,
    PeriodKind,
    ShareTerms,
    agreements_for_offer,
    allocate,
    compile_terms,
    exact_share,
    split_record,
    tiered_share,
)
from tollgate_core.resources.common import Ref
from tollgate_core.resources.partner import ShareModel

EUR = 1_000_000


def terms(name: str, model: ShareModel, *, percent: Fraction = Fraction(0), fee: int = 0,
          tiers: tuple[tuple[int, Fraction], ...] = (), direction: int = 1) -> ShareTerms:
    return ShareTerms(agreement=name, partner_id=f"p-{name}", model=model, direction=direction,
                      percent=percent, fee_micros=fee, tiers=tiers, offers=frozenset(),
                      valid_from=None, valid_to=None, period=PeriodKind.MONTHLY,
                      minimum_micros=None, cap_micros=None, settlement_currency="EUR")


def test_a_half_micro_tie_goes_to_the_operator() -> None:
    # 30 % of 5 micros: partner exactly 1.5, operator 3.5; one micro is left after the
    # floors (1 + 3) and both remainders are .5: the tie goes to the operator.
    split = split_record(5, 0, [terms("a", ShareModel.PERCENTAGE, percent=Fraction(3, 10))],
                         {})
    assert (split.operator_micros, split.share("a")) == (4, 1)


def test_ties_between_partners_go_by_agreement_name() -> None:
    # Three partners with a third each of 100 micros: 33⅓ each, the operator exactly 0.
    # Floors give 99; the one micro left goes to the first name among equal remainders.
    third = Fraction(1, 3)
    split = split_record(100, 0, [terms(n, ShareModel.PERCENTAGE, percent=third)
                                  for n in ("c", "a", "b")], {})
    assert split.operator_micros == 0
    assert split.shares == (("a", 34), ("b", 33), ("c", 33))


def test_largest_remainder_wins_over_name_order() -> None:
    # 100 micros: "a" 12.5 % → 12.5, "b" 17.7 % → 17.7, operator 69.8. Floors 12 + 17 + 69
    # = 98; the two micros left go to the largest remainders (operator .8, b .7), not to
    # "a" (.5) although its name comes first.
    split = split_record(100, 0, [terms("a", ShareModel.PERCENTAGE, percent=Fraction(1, 8)),
                                  terms("b", ShareModel.PERCENTAGE,
                                        percent=Fraction(177, 1000))], {})
    assert (split.operator_micros, split.share("a"), split.share("b")) == (70, 12, 18)


def test_per_unit_fee_can_exceed_the_gross() -> None:
    # 300 API calls at 0.000005 EUR each = 1,500 micros owed on a record that earned 1,000:
    # the operator share is −500 (it pays the partner more than it took on this record).
    split = split_record(1_000, 300, [terms("api", ShareModel.PER_UNIT_FEE, fee=5)], {})
    assert (split.operator_micros, split.share("api")) == (-500, 1_500)


def test_a_paying_partner_has_a_negative_share() -> None:
    # payer: partner — the partner owes the operator 10 % of 1,000 micros.
    split = split_record(1_000, 0, [terms("mvno", ShareModel.PERCENTAGE,
                                          percent=Fraction(1, 10), direction=-1)], {})
    assert (split.operator_micros, split.share("mvno")) == (1_100, -100)


TIERS = ((0, Fraction(1, 10)), (100 * EUR, Fraction(2, 10)), (1_000 * EUR, Fraction(3, 10)))


def test_tiered_is_graduated_over_the_month_so_far() -> None:
    # 90 EUR of the month came before; a 20 EUR record spans 90 → 110 EUR: 10 EUR at 10 %
    # and 10 EUR at 20 % = 1 + 2 = 3 EUR.
    assert tiered_share(TIERS, 90 * EUR, 20 * EUR) == 3 * EUR
    # Wholly in the top tier: 30 %.
    assert tiered_share(TIERS, 2_000 * EUR, 10 * EUR) == 3 * EUR
    # Gross below the first tier's threshold earns nothing: 60 EUR from 0 with a first tier
    # at 50 EUR → 10 EUR × 10 % = 1 EUR.
    assert tiered_share(((50 * EUR, Fraction(1, 10)),), 0, 60 * EUR) == 1 * EUR
    split = split_record(20 * EUR, 0, [terms("t", ShareModel.TIERED, tiers=TIERS)],
                         {"t": 90 * EUR})
    assert (split.operator_micros, split.share("t")) == (17 * EUR, 3 * EUR)


def test_an_agreement_cannot_take_the_operators_key() -> None:
    with pytest.raises(ValueError, match="operator"):
        allocate(10, {OPERATOR: Fraction(1)})


def test_agreements_apply_by_partner_ref_and_by_offer_selector() -> None:
    source = example_source()
    catalog = compile_catalog(source)
    assert agreements_for_offer(catalog, "data-boost") == ["streamflix"]
    assert agreements_for_offer(catalog, "mobile-m") == []
    assert agreements_for_offer(catalog, "no-such-offer") == []
    # The plan names a second agreement by partnerRef; both selectors are honoured, once each.
    streamflix = source.partners["streamflix"]
    plan = source.offers["mobile-m"].model_copy(update={"partner_ref": Ref(name="musicbox")})
    boost = source.offers["data-boost"].model_copy(update={"partner_ref": Ref(name="streamflix")})
    musicbox = streamflix.model_copy(update={"offer_selector": streamflix.offer_selector
                                             .model_copy(update={"offers": ["mobile-m"]})})
    both = compile_catalog(CatalogSource(
        source.tenant, {**source.offers, "mobile-m": plan, "data-boost": boost},
        {**source.partners, "musicbox": musicbox}))
    assert agreements_for_offer(both, "mobile-m") == ["musicbox"]
    assert agreements_for_offer(both, "data-boost") == ["streamflix"]


def test_compiled_terms_of_the_example_agreement() -> None:
    compiled = compile_terms("streamflix", example_source().partners["streamflix"])
    assert compiled.model is ShareModel.PERCENTAGE
    assert compiled.percent == Fraction(3, 10)
    assert (compiled.direction, compiled.period, compiled.settlement_currency) == (
        1, PeriodKind.MONTHLY, "EUR")
    assert (compiled.minimum_micros, compiled.cap_micros) == (None, None)
    assert compiled.offers == {"data-boost"}


# --- properties ------------------------------------------------------------------------------

percents = st.integers(0, 1_000_000).map(lambda n: Fraction(n, 10_000))  # 0–100 %, 4 places


@st.composite
def share_terms(draw: st.DrawFn, name: str) -> ShareTerms:
    model = draw(st.sampled_from(list(ShareModel)))
    direction = draw(st.sampled_from([1, -1]))
    if model is ShareModel.PERCENTAGE:
        return terms(name, model, percent=draw(percents), direction=direction)
    if model is ShareModel.PER_UNIT_FEE:
        return terms(name, model, fee=draw(st.integers(0, 10 * EUR)), direction=direction)
    starts = draw(st.lists(st.integers(0, 10**12), min_size=1, max_size=8, unique=True))
    tiers = tuple(sorted((s, draw(percents)) for s in starts))
    return terms(name, model, tiers=tiers, direction=direction)


@st.composite
def agreements(draw: st.DrawFn) -> list[ShareTerms]:
    names = draw(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "e", "z-9"]),
                          unique=True, max_size=6))
    return [draw(share_terms(n)) for n in names]


@given(gross=st.integers(0, 10**13), units=st.integers(0, 10**9), chosen=agreements(),
       running=st.integers(0, 10**12))
def test_split_is_exact_close_and_deterministic(gross: int, units: int,
                                                chosen: list[ShareTerms],
                                                running: int) -> None:
    months = {t.agreement: running for t in chosen}
    split = split_record(gross, units, chosen, months)
    exact = {t.agreement: exact_share(t, gross, units, running) for t in chosen}
    # operator + partners = gross, to the micro
    assert split.operator_micros + sum(s for _, s in split.shares) == gross
    # every party within one micro of its exact share (the operator's is the rest)
    for agreement, share in split.shares:
        assert abs(share - exact[agreement]) < 1
    assert abs(split.operator_micros - (gross - sum(exact.values(), Fraction(0)))) < 1
    # deterministic: the order the agreements come in does not matter
    assert split_record(gross, units, list(reversed(chosen)), months) == split
    assert [a for a, _ in split.shares] == sorted(t.agreement for t in chosen)


@given(exact=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                             st.fractions(min_value=-10**9, max_value=10**9,
                                          max_denominator=10**6)),
       gross=st.integers(-10**9, 10**12))
def test_allocation_of_any_fractions_is_exact(exact: dict[str, Fraction], gross: int) -> None:
    split = allocate(gross, exact)
    assert split.operator_micros + sum(s for _, s in split.shares) == gross
    for agreement, share in split.shares:
        assert abs(share - exact[agreement]) < 1
    # Largest remainder only ever rounds up what has a fractional part.
    for agreement, share in split.shares:
        if exact[agreement].denominator == 1:
            assert share == exact[agreement]


@given(tiers=st.lists(st.tuples(st.integers(0, 10**10), percents), min_size=1, max_size=8,
                      unique_by=lambda t: t[0]).map(lambda ts: tuple(sorted(ts))),
       running=st.integers(0, 10**10), first=st.integers(0, 10**10),
       second=st.integers(0, 10**10))
def test_graduated_tiers_do_not_depend_on_how_the_month_is_cut(
        tiers: tuple[tuple[int, Fraction], ...], running: int, first: int,
        second: int) -> None:
    whole = tiered_share(tiers, running, first + second)
    assert tiered_share(tiers, running, first) + tiered_share(tiers, running + first,
                                                              second) == whole
    assert 0 <= whole <= (first + second) * max(p for _, p in tiers)


def test_realtime_agreements_get_daily_statements_and_validity_is_half_open() -> None:
    spec = example_source().partners["streamflix"]
    realtime = spec.model_copy(update={
        "settlement": spec.settlement.model_copy(update={"period": "realtime"}),
        "valid_for": spec.valid_for.model_copy(update={
            "start": datetime(2026, 10, 1, tzinfo=UTC), "end": datetime(2026, 11, 1, tzinfo=UTC)}),
    })
    compiled = compile_terms("streamflix", realtime)
    assert compiled.period is PeriodKind.DAILY
    assert compiled.valid_at(datetime(2026, 10, 1, tzinfo=UTC))  # start inclusive
    assert not compiled.valid_at(datetime(2026, 11, 1, tzinfo=UTC))  # end exclusive
    assert not compiled.valid_at(datetime(2026, 9, 30, 23, 59, tzinfo=UTC))
    assert compiled.valid_during(datetime(2026, 10, 31, tzinfo=UTC),
                                 datetime(2026, 11, 30, tzinfo=UTC))
    assert not compiled.valid_during(datetime(2026, 11, 1, tzinfo=UTC),
                                     datetime(2026, 12, 1, tzinfo=UTC))
    assert not compiled.valid_during(datetime(2026, 9, 1, tzinfo=UTC),
                                     datetime(2026, 10, 1, tzinfo=UTC))
