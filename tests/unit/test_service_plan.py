"""Service plans: what prices a service for a line's offers, computed once per (revision,
offers, service) and applied to any line's subscriptions."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from fractions import Fraction

from tests.factories import example_resources
from tollgate_core.domain.catalog import Catalog, CatalogSource, compile_catalog
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.engines.pricing import PlanCache, Pricing, ServicePlan
from tollgate_core.resources import Offer, PartnerAgreement, Tenant
from tollgate_core.resources.offer import Service
from tollgate_core.store.rating_repo import ActiveSubscription


def example_catalog() -> Catalog:
    resources = example_resources("de")
    tenant = next(r for r in resources if isinstance(r, Tenant))
    return compile_catalog(CatalogSource(
        tenant.spec,
        {r.metadata.name: r.spec for r in resources if isinstance(r, Offer)},
        {r.metadata.name: r.spec for r in resources if isinstance(r, PartnerAgreement)}))


def subscription(offer: str, tier: str | None = None) -> ActiveSubscription:
    return ActiveSubscription(uuid.uuid4(), uuid.uuid4(), offer, "491701234567",
                              datetime(2026, 1, 1, tzinfo=UTC), 1, tier)


CATALOG = example_catalog()


def test_plan_and_add_on_draw_in_subscription_order_and_the_plan_prices() -> None:
    plan = ServicePlan.build(1, CATALOG, ["mobile-m", "data-boost"], Service.DATA)
    assert plan is not None
    assert [(i, r.name) for i, r in plan.allowances] == [(0, "data-5gb"), (1, "boost-2gb")]
    assert plan.tariff is not None
    assert plan.tariff.price_name == "data-payg"
    assert plan.tariff_position == 0
    assert not plan.shared  # no agreement shares mobile-m's revenue

    # subscribed the other way round: the add-on's allowance first, the plan still prices
    swapped = ServicePlan.build(1, CATALOG, ["data-boost", "mobile-m"], Service.DATA)
    assert swapped is not None
    assert [(i, r.name) for i, r in swapped.allowances] == [(0, "boost-2gb"), (1, "data-5gb")]
    assert swapped.tariff_position == 1
    subs = [subscription("data-boost"), subscription("mobile-m")]
    assert swapped.owner(subs) is subs[1]


def test_an_add_on_alone_has_no_tariff_and_its_revenue_is_shared() -> None:
    plan = ServicePlan.build(1, CATALOG, ["data-boost"], Service.DATA)
    assert plan is not None
    assert plan.tariff is None
    assert plan.shared  # streamflix's offerSelector lists data-boost
    subs = [subscription("data-boost")]
    assert plan.paid_key(subs, date(2026, 11, 23)) is None
    assert plan.owner(subs) is subs[0]


def test_offers_missing_from_the_revision_give_no_plan_and_other_services_nothing() -> None:
    assert ServicePlan.build(1, CATALOG, ["mobile-xxl"], Service.DATA) is None
    voice = ServicePlan.build(1, CATALOG, ["mobile-m"], Service.VOICE)
    assert voice is not None
    assert (voice.allowances, voice.tariff) == ((), None)


def test_keys_are_the_lines_own_for_the_local_day_period() -> None:
    cache = PlanCache()
    plan = cache.get(1, CATALOG, ("mobile-m",), Service.DATA)
    assert plan is cache.get(1, CATALOG, ("mobile-m",), Service.DATA)  # computed once
    first, second = [subscription("mobile-m")], [subscription("mobile-m")]
    assert plan is not None
    day = date(2026, 11, 23)
    assert plan.allowance_keys(first, day) == [
        ((first[0].subscription_id, "data-5gb", date(2026, 11, 1)), (5 * 1024**3, None))]
    # the day's periods are cached without ids: another line gets its own
    assert plan.allowance_keys(second, day)[0][0][0] == second[0].subscription_id
    assert plan.paid_key(second, day) == (second[0].subscription_id, "data", date(2026, 11, 1))
    assert plan.allowance_keys(first, date(2026, 12, 1))[0][0][2] == date(2026, 12, 1)


def test_pricing_answers_through_the_same_plan() -> None:
    subs = (subscription("data-boost", tier="gold"), subscription("mobile-m"))
    pricing = Pricing(1, CATALOG, tuple((s, CATALOG.offers[s.offer]) for s in subs),
                      datetime(2026, 11, 30, 23, 30, tzinfo=UTC))  # Dec 1st in Berlin
    assert [k[0][1:] for k in pricing.allowance_keys(Service.DATA)] == [
        ("boost-2gb", date(2026, 12, 1)), ("data-5gb", date(2026, 12, 1))]
    tariff = pricing.tariff(Service.DATA)
    assert tariff is not None
    assert tariff[0] is subs[1]
    assert pricing.owner_for(Service.DATA) is subs[1]
    assert pricing.owner_for(Service.VOICE) is subs[0]
    assert pricing.paid_key(Service.DATA) == (subs[1].subscription_id, "data", date(2026, 12, 1))
    assert pricing.factors(Service.DATA, {"zone": "eu"}, CongestionMap()) == (Fraction(1), {})
