"""What prices a subscriber's usage at a moment: revision, subscribed offers, allowance
buckets, the usage tariff. Shared by offline rating and online charging."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from fractions import Fraction

from tollgate_core.domain.catalog import Catalog, CompiledOffer, UsageTariff
from tollgate_core.domain.rating import ONE, When, period_start, previous_period_start
from tollgate_core.domain.usage import RejectReason, UsageRejected
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.resources.offer import Period, Service
from tollgate_core.store.rating_repo import ActiveSubscription, BucketKey, BucketTerms

PAID_USAGE_PERIOD = Period.MONTH  # graduated tiers count paid units per calendar month


@dataclass(frozen=True, slots=True)
class Pricing:
    revision: int
    catalog: Catalog
    offers: tuple[tuple[ActiveSubscription, CompiledOffer], ...]
    when_at: datetime

    def allowance_keys(self, service: Service) -> list[tuple[BucketKey, BucketTerms]]:
        """(bucket key, (quantity, period to roll unused units over from)) of every allowance
        for `service`, plan first."""
        keys = []
        for sub, offer in self.offers:
            for rule in offer.allowances:
                if rule.service is service:
                    start = period_start(self.when_at, rule.period, self.catalog.timezone)
                    carry = previous_period_start(start, rule.period) if rule.rollover else None
                    keys.append(((sub.subscription_id, rule.name, start),
                                 (rule.quantity, carry)))
        return keys

    def tariff(self, service: Service) -> tuple[ActiveSubscription, UsageTariff] | None:
        """The usage price of the first subscribed offer that has one for `service`."""
        for sub, offer in self.offers:
            if service in offer.usage:
                return sub, offer.usage[service]
        return None

    def paid_key(self, service: Service) -> tuple[uuid.UUID, str, date] | None:
        priced = self.tariff(service)
        if priced is None:
            return None
        start = period_start(self.when_at, PAID_USAGE_PERIOD, self.catalog.timezone)
        return priced[0].subscription_id, service.value, start

    def factors(self, service: Service, attributes: dict[str, str],
                congestion: CongestionMap) -> tuple[Fraction, dict[str, str]]:
        """Zone and congestion multipliers for an event, and what they were (for the record)."""
        priced = self.tariff(service)
        if priced is None:
            return ONE, {}
        factor, applied = ONE, {}
        zone = attributes.get("zone")
        if zone is not None and zone in priced[1].zones:
            factor *= priced[1].zones[zone]
            applied["zone"] = zone
        level = congestion.level(attributes.get("cell"))
        offer = next(o for s, o in self.offers if s is priced[0])
        if level is not None and level.value in offer.congestion:
            factor *= offer.congestion[level.value]
            applied["congestion"] = level.value
        tier = priced[0].loyalty_tier
        if tier is not None and tier in offer.loyalty:
            factor *= offer.loyalty[tier]
            applied["loyalty"] = tier
        return factor, applied

    def when(self) -> When:
        return When(self.when_at, self.catalog.timezone)

    @property
    def owner(self) -> ActiveSubscription:
        return self.offers[0][0]

    def owner_for(self, service: Service) -> ActiveSubscription:
        priced = self.tariff(service)
        return priced[0] if priced else self.owner


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
