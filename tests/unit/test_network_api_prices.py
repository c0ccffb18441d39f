"""Network API prices (ADR 0015): one price per call, or graduated tiers of the calls of a
calendar month; exact integers of micro-units, no rounding anywhere.

Worked example (EUR). Tiers: calls 1–1,000 of a month at 0.002, calls 1,001–10,000 at
0.0015, every call after at 0.00125; numbered from 0 that is [0, 1000), [1000, 10000),
[10000, ∞). In micro-units: 2,000, 1,500 and 1,250 a call.
  call 1 (number 0)         → 2,000
  call 1,000 (number 999)   → 2,000
  call 1,001 (number 1,000) → 1,500
  call 10,001 (number 10,000) → 1,250
  12,345 calls in a month: 1,000 × 2,000 + 9,000 × 1,500 + 2,345 × 1,250
                         = 2,000,000 + 13,500,000 + 2,931,250 = 18,431,250 (18.43125 EUR)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate_core.domain.errors import Forbidden
from tollgate_core.domain.network_api import (
    CallTier,
    api_terms,
    call_price,
    calls_price,
    compile_tiers,
)
from tollgate_core.resources import PartnerAgreement, ResourceError, parse_resource
from tollgate_core.resources.partner import NetworkApi

TIERS = [{"from": 0, "to": 1000, "pricePerCall": "0.002"},
         {"from": 1000, "to": 10000, "pricePerCall": "0.0015"},
         {"from": 10000, "pricePerCall": "0.00125"}]
WHEN = datetime(2026, 11, 23, 10, tzinfo=UTC)


def agreement(*apis: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "PartnerAgreement",
        "metadata": {"name": "lab"},
        "spec": {"tenantRef": {"name": "de"}, "role": "apiConsumer",
                 "partner": {"id": "lab", "displayName": "Lab",
                             "contactEmail": "billing@lab.example",
                             "settlementCurrency": "EUR"},
                 "revenueShare": {"model": "percentage", "percent": "0"},
                 "networkApis": list(apis)}}


def terms(api: dict[str, Any]) -> Any:
    resource = parse_resource(agreement(api))
    assert isinstance(resource, PartnerAgreement)
    return api_terms("lab", resource.spec, api["name"], WHEN)


def errors(api: dict[str, Any]) -> list[str]:
    with pytest.raises(ResourceError) as caught:
        parse_resource(agreement(api), "lab.yaml")
    return caught.value.errors


def test_tiered_worked_example() -> None:
    qod = terms({"name": "qod", "tiers": TIERS})
    assert [qod.price_of_call(n) for n in (0, 999, 1000, 9999, 10_000, 10**9)] == [
        2_000, 2_000, 1_500, 1_500, 1_250, 1_250]
    assert calls_price(qod.tiers, 0, 12_345) == 18_431_250
    assert sum(qod.price_of_call(n) for n in range(12_345)) == 18_431_250
    # The next month starts again at call 0: the first call costs 2,000 again.
    assert calls_price(qod.tiers, 0, 1) == 2_000


def test_price_per_call_is_one_open_tier_and_no_price_is_free() -> None:
    flat = terms({"name": "qod", "pricePerCall": "0.0125"})
    assert flat.tiers == (CallTier(0, None, 12_500),)
    assert {flat.price_of_call(n) for n in (0, 1, 10**12)} == {12_500}
    free = terms({"name": "qod"})
    assert free.tiers == () and free.price_of_call(7) == 0
    # A free first tier: the first 100 calls of a month cost nothing.
    trial = terms({"name": "qod", "tiers": [{"from": 0, "to": 100, "pricePerCall": "0"},
                                            {"from": 100, "pricePerCall": "0.01"}]})
    assert (trial.price_of_call(99), trial.price_of_call(100)) == (0, 10_000)
    with pytest.raises(ValueError, match="numbered from 0"):
        call_price(trial.tiers, -1)


def test_an_api_not_in_the_agreement_is_forbidden() -> None:
    resource = parse_resource(agreement({"name": "location", "tiers": TIERS}))
    assert isinstance(resource, PartnerAgreement)
    with pytest.raises(Forbidden, match="'qod'"):
        api_terms("lab", resource.spec, "qod", WHEN)


@pytest.mark.parametrize(("api", "message"), [
    ({"name": "qod", "pricePerCall": "0.01", "tiers": TIERS},
     "spec.networkApis.0: Value error, networkApis: set pricePerCall or tiers, not both "
     "(networkApis 'qod')"),
    ({"name": "qod", "tiers": [{"from": 1, "pricePerCall": "0.01"}]},
     "networkApis.tiers: the first tier must start at call 0 (the month's first call), at "
     "networkApis 'qod' tiers[0]"),
    ({"name": "qod", "tiers": [{"from": 0, "to": 100, "pricePerCall": "0.01"},
                               {"from": 100, "to": 50, "pricePerCall": "0.01"},
                               {"from": 50, "pricePerCall": "0.01"}]},
     "networkApis.tiers: every tier but the last needs `to` greater than `from`, at "
     "networkApis 'qod' tiers[1]"),
    ({"name": "qod", "tiers": [{"from": 0, "to": 100, "pricePerCall": "0.01"},
                               {"from": 200, "pricePerCall": "0.005"}]},
     "networkApis.tiers: must be ascending and contiguous (each `from` equals the previous "
     "`to`), at networkApis 'qod' tiers[1]"),
    ({"name": "qod", "tiers": [{"from": 0, "to": 100, "pricePerCall": "0.01"},
                               {"from": 0, "to": 100, "pricePerCall": "0.01"},
                               {"from": 100, "pricePerCall": "0.005"}]},
     "networkApis.tiers: must be ascending and contiguous (each `from` equals the previous "
     "`to`), at networkApis 'qod' tiers[1]"),
    ({"name": "qod", "tiers": [{"from": 0, "to": 100, "pricePerCall": "0.01"}]},
     "networkApis.tiers: the last tier must be open-ended (no `to`); bound the calls with "
     "monthlyQuota, at networkApis 'qod' tiers[0]"),
])
def test_mistakes_name_the_api_the_tier_and_the_rule(api: dict[str, Any], message: str) -> None:
    found = errors(api)
    assert any(message in e for e in found), found


def test_tier_fields_are_checked_like_every_price() -> None:
    found = errors({"name": "qod", "tiers": [{"from": 0, "pricePerCall": 0.01}]})
    assert any(e.startswith("spec.networkApis.0.tiers.0.pricePerCall:") for e in found), found
    found = errors({"name": "qod", "tiers": []})
    assert any(e.startswith("spec.networkApis.0.tiers:") for e in found), found
    found = errors({"name": "qod", "tiers": [{"from": -1, "pricePerCall": "1"}]})
    assert any(e.startswith("spec.networkApis.0.tiers.0.from:") for e in found), found


@st.composite
def schedules(draw: st.DrawFn) -> tuple[CallTier, ...]:
    """Valid tier lists: from 0, contiguous, the last open-ended, prices up to 1 major unit."""
    widths = draw(st.lists(st.integers(1, 50), max_size=5))
    prices = draw(st.lists(st.integers(0, 1_000_000), min_size=len(widths) + 1,
                           max_size=len(widths) + 1))
    tiers, start = [], 0
    for width, price in zip(widths, prices, strict=False):
        tiers.append(CallTier(start, start + width, price))
        start += width
    tiers.append(CallTier(start, None, prices[-1]))
    return tuple(tiers)


@given(schedules(), st.integers(0, 300), st.integers(0, 300), st.integers(0, 300))
def test_graduated_prices_add_up_however_the_calls_are_grouped(
        tiers: tuple[CallTier, ...], first: int, count: int, more: int) -> None:
    # Each call costs exactly its tier's price; a run of calls costs the sum of its calls;
    # two consecutive runs cost what the whole run costs (no rounding, no order effects).
    one_by_one = sum(call_price(tiers, n) for n in range(first, first + count))
    assert calls_price(tiers, first, count) == one_by_one
    assert (calls_price(tiers, first, count) + calls_price(tiers, first + count, more)
            == calls_price(tiers, first, count + more))
    for n in range(first, first + count):
        tier = next(t for t in tiers if t.start <= n and (t.end is None or n < t.end))
        assert call_price(tiers, n) == tier.price_micros


@given(schedules())
def test_the_model_accepts_what_compiles_to_the_same_tiers(tiers: tuple[CallTier, ...]) -> None:
    def amount(micros: int) -> str:
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    entry = NetworkApi.model_validate({"name": "qod", "tiers": [
        {"from": t.start, **({"to": t.end} if t.end is not None else {}),
         "pricePerCall": amount(t.price_micros)} for t in tiers]})
    assert compile_tiers(entry) == tiers
