"""What prices a subscriber's usage at a moment: revision, subscribed offers, allowance
buckets, the usage tariff. Shared by offline rating and online charging."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from fractions import Fraction

from tollgate_core.domain.catalog import AllowanceRule, Catalog, CompiledOffer, UsageTariff
from tollgate_core.domain.rating import (
    ONE,
    When,
    local_date,
    period_start_of,
    previous_period_start,
)
from tollgate_core.domain.settlement import agreements_for_offer
from tollgate_core.domain.usage import RejectReason, UsageRejected
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.resources.offer import Period, Service
from tollgate_core.store.rating_repo import ActiveSubscription, BucketKey, BucketTerms, PaidKey

PAID_USAGE_PERIOD = Period.MONTH  # graduated tiers count paid units per calendar month
DAYS_CACHED = 64


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """How one service is priced for a line whose subscriptions (in subscription order) are
    to the offers `names`, under one catalog revision.

    It holds no subscription ids and no time, so it is computed once per (revision, offers,
    service) and shared by every event of every line with those offers; `subs` below are the
    line's subscriptions, in the order the plan was built from."""

    revision: int
    catalog: Catalog
    service: Service
    offers: tuple[tuple[int, CompiledOffer], ...]
    """(position in `subs`, offer) of each subscription whose offer is in this revision"""
    allowances: tuple[tuple[int, AllowanceRule], ...]
    """(position in `subs`, rule) of every allowance for the service, plan first"""
    tariff: UsageTariff | None
    """the usage price of the first subscribed offer that has one for the service"""
    tariff_position: int
    """position in `subs` of the subscription owning the tariff (the first one when none)"""
    tariff_offer: CompiledOffer | None
    dynamic: bool
    """whether zone, congestion or loyalty multipliers can apply at all"""
    shared: bool
    """whether partner agreements of this revision share the revenue of the tariff's offer"""
    _days: dict[date, tuple[list[tuple[int, str, date, BucketTerms]], date]] = field(
        default_factory=dict, compare=False, repr=False)
    """per local day: the allowance buckets without subscription ids, and the month"""

    @classmethod
    def build(cls, revision: int, catalog: Catalog, names: Sequence[str],
              service: Service) -> ServicePlan | None:
        """None when no offer of `names` is in the revision."""
        offers = tuple((i, catalog.offers[n]) for i, n in enumerate(names) if n in catalog.offers)
        if not offers:
            return None
        allowances = tuple((i, rule) for i, offer in offers for rule in offer.allowances
                           if rule.service is service)
        priced = next(((i, offer) for i, offer in offers if service in offer.usage), None)
        tariff = priced[1].usage[service] if priced else None
        dynamic = priced is not None and bool(
            priced[1].usage[service].zones or priced[1].congestion or priced[1].loyalty)
        owner = priced if priced else offers[0]
        return cls(revision, catalog, service, offers, allowances, tariff, owner[0],
                   priced[1] if priced else None, dynamic,
                   bool(agreements_for_offer(catalog, owner[1].name)))

    def _day(self, local: date) -> tuple[list[tuple[int, str, date, BucketTerms]], date]:
        found = self._days.get(local)
        if found is None:
            if len(self._days) >= DAYS_CACHED:
                self._days.clear()
            buckets = []
            for position, rule in self.allowances:
                start = period_start_of(local, rule.period)
                carry = previous_period_start(start, rule.period) if rule.rollover else None
                buckets.append((position, rule.name, start, (rule.quantity, carry)))
            found = self._days[local] = (buckets, period_start_of(local, PAID_USAGE_PERIOD))
        return found

    def allowance_keys(self, subs: Sequence[ActiveSubscription], local: date
                       ) -> list[tuple[BucketKey, BucketTerms]]:
        """(bucket key, (quantity, period to roll unused units over from)) of every allowance
        for the service on the local day `local`, plan first."""
        return [((subs[position].subscription_id, name, start), terms)
                for position, name, start, terms in self._day(local)[0]]

    def paid_key(self, subs: Sequence[ActiveSubscription], local: date) -> PaidKey | None:
        if self.tariff is None:
            return None
        return (subs[self.tariff_position].subscription_id, self.service.value,
                self._day(local)[1])

    def owner(self, subs: Sequence[ActiveSubscription]) -> ActiveSubscription:
        """The subscription a rated record belongs to: the tariff's, else the first."""
        return subs[self.tariff_position]

    def factors(self, subs: Sequence[ActiveSubscription], attributes: dict[str, str],
                congestion: CongestionMap) -> tuple[Fraction, dict[str, str]]:
        """Zone and congestion multipliers for an event, and what they were (for the record)."""
        if not self.dynamic or self.tariff is None or self.tariff_offer is None:
            return ONE, {}
        factor, applied = ONE, {}
        zone = attributes.get("zone")
        if zone is not None and zone in self.tariff.zones:
            factor *= self.tariff.zones[zone]
            applied["zone"] = zone
        level = congestion.level(attributes.get("cell"))
        offer = self.tariff_offer
        if level is not None and level.value in offer.congestion:
            factor *= offer.congestion[level.value]
            applied["congestion"] = level.value
        tier = subs[self.tariff_position].loyalty_tier
        if tier is not None and tier in offer.loyalty:
            factor *= offer.loyalty[tier]
            applied["loyalty"] = tier
        return factor, applied


class PlanCache:
    """Service plans by (revision, offers, service). Revisions are immutable, so a plan never
    goes stale; the cache is only bounded in size."""

    MAX_PLANS = 10_000

    def __init__(self) -> None:
        self._plans: dict[tuple[int, tuple[str, ...], Service], ServicePlan | None] = {}

    def get(self, revision: int, catalog: Catalog, names: tuple[str, ...],
            service: Service) -> ServicePlan | None:
        key = (revision, names, service)
        try:
            return self._plans[key]
        except KeyError:
            pass
        if len(self._plans) >= self.MAX_PLANS:
            self._plans.clear()
        plan = self._plans[key] = ServicePlan.build(revision, catalog, names, service)
        return plan


@dataclass(frozen=True, slots=True)
class Pricing:
    revision: int
    catalog: Catalog
    offers: tuple[tuple[ActiveSubscription, CompiledOffer], ...]
    when_at: datetime

    def _plan(self, service: Service) -> tuple[ServicePlan, list[ActiveSubscription]]:
        plan = ServicePlan.build(self.revision, self.catalog, [o.name for _, o in self.offers],
                                 service)
        assert plan is not None, "a Pricing has at least one offer of its revision"
        return plan, [s for s, _ in self.offers]

    def _local(self) -> date:
        return local_date(self.when_at, self.catalog.timezone)

    def allowance_keys(self, service: Service) -> list[tuple[BucketKey, BucketTerms]]:
        """(bucket key, (quantity, period to roll unused units over from)) of every allowance
        for `service`, plan first."""
        plan, subs = self._plan(service)
        return plan.allowance_keys(subs, self._local())

    def tariff(self, service: Service) -> tuple[ActiveSubscription, UsageTariff] | None:
        """The usage price of the first subscribed offer that has one for `service`."""
        plan, subs = self._plan(service)
        return (subs[plan.tariff_position], plan.tariff) if plan.tariff else None

    def paid_key(self, service: Service) -> tuple[uuid.UUID, str, date] | None:
        plan, subs = self._plan(service)
        return plan.paid_key(subs, self._local())

    def factors(self, service: Service, attributes: dict[str, str],
                congestion: CongestionMap) -> tuple[Fraction, dict[str, str]]:
        """Zone and congestion multipliers for an event, and what they were (for the record)."""
        plan, subs = self._plan(service)
        return plan.factors(subs, attributes, congestion)

    def when(self) -> When:
        return When(self.when_at, self.catalog.timezone)

    @property
    def owner(self) -> ActiveSubscription:
        return self.offers[0][0]

    def owner_for(self, service: Service) -> ActiveSubscription:
        plan, subs = self._plan(service)
        return plan.owner(subs)


def resolve(cache: CatalogCache, subscriber: str, subs: list[ActiveSubscription] | None,
            when: datetime) -> Pricing:
    """Raise UsageRejected when the line is unknown or no subscribed offer is in the catalog."""
    if not subs:
        raise UsageRejected(RejectReason.UNKNOWN_SUBSCRIBER,
                            f"no active subscription for {subscriber!r}")
    found = cache.at(when)
    if found is None:
        raise UsageRejected(RejectReason.NO_VALID_OFFER, "the tenant has no catalog yet")
    revision, catalog = found
    offers = tuple((s, catalog.offers[s.offer]) for s in subs if s.offer in catalog.offers)
    if not offers:
        # Usage stamped before its offer was published (clock skew, late test data): price
        # it by the revision the line was sold under rather than refuse it.
        sold_under = max(s.catalog_revision for s in subs)
        fallback = at_revision(cache, sold_under, subs, when) if sold_under > revision else None
        if fallback is not None:
            return fallback
        raise UsageRejected(RejectReason.NO_VALID_OFFER,
                            f"no subscribed offer exists in catalog revision {revision}")
    return Pricing(revision, catalog, offers, when)


def at_revision(cache: CatalogCache, revision: int, subs: list[ActiveSubscription],
                when: datetime) -> Pricing | None:
    """The pricing of a reservation at the revision it was granted under."""
    catalog = cache.get(revision)
    if catalog is None:
        return None
    offers = tuple((s, catalog.offers[s.offer]) for s in subs if s.offer in catalog.offers)
    return Pricing(revision, catalog, offers, when) if offers else None
