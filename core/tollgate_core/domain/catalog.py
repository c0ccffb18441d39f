"""Compile Offer and PartnerAgreement specs into an immutable catalog revision of a tenant.

A revision is a snapshot of every offer and partner agreement of the tenant. Compiling is pure
and deterministic, so the same specs always give the same revision content (and digest).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from tollgate_core.domain.money import parse_micros
from tollgate_core.domain.thresholds import ThresholdRule
from tollgate_core.resources.offer import (
    SERVICE_UNITS,
    LifecycleStatus,
    OfferKind,
    OfferSpec,
    Period,
    Service,
    Unit,
    Weekday,
)
from tollgate_core.resources.partner import PartnerAgreementSpec
from tollgate_core.resources.tenant import TenantSpec


class CatalogError(ValueError):
    """Specs that cannot be compiled; each error names the resource, field path and rule."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


@dataclass(frozen=True, slots=True)
class Tier:
    start: int
    end: int | None
    price_micros: int
    per: int


@dataclass(frozen=True, slots=True)
class Band:
    """A time band: minutes [start, end) of the local day on `days` (0 = Monday)."""

    name: str
    days: frozenset[int]
    start_minute: int
    end_minute: int
    factor: Fraction


@dataclass(frozen=True, slots=True)
class UsageTariff:
    price_name: str
    service: Service
    unit: Unit
    increment: int
    minimum: int
    tiers: tuple[Tier, ...]
    bands: tuple[Band, ...] = ()
    zones: dict[str, Fraction] = field(default_factory=dict, hash=False)
    volume: bool = False


@dataclass(frozen=True, slots=True)
class AllowanceRule:
    name: str
    service: Service
    quantity: int
    period: Period
    rollover: bool


@dataclass(frozen=True, slots=True)
class RecurringFee:
    price_name: str
    amount_micros: int
    period: Period
    prorate: bool
    in_advance: bool = True


@dataclass(frozen=True, slots=True)
class DiscountRule:
    """Off the recurring charges of a bill cycle: a fraction or a fixed amount, for the
    first `cycles` bill cycles of a subscription (None: for ever)."""

    name: str
    fraction: Fraction | None
    fixed_micros: int | None
    cycles: int | None


@dataclass(frozen=True, slots=True)
class CompiledOffer:
    name: str
    display_name: str
    description: str
    kind: OfferKind
    lifecycle: LifecycleStatus
    valid_from: datetime | None
    valid_to: datetime | None
    channels: tuple[str, ...]
    segments: tuple[str, ...]
    tax_category: str
    recurring: tuple[RecurringFee, ...]
    one_time_micros: int
    usage: dict[Service, UsageTariff] = field(hash=False)
    allowances: tuple[AllowanceRule, ...]
    bundle: tuple[str, ...]
    partner: str | None
    thresholds: tuple[ThresholdRule, ...] = ()
    congestion: dict[str, Fraction] = field(default_factory=dict, hash=False)
    discounts: tuple[DiscountRule, ...] = ()
    loyalty: dict[str, Fraction] = field(default_factory=dict, hash=False)

    def sellable_at(self, when: datetime) -> bool:
        if self.lifecycle is not LifecycleStatus.ACTIVE:
            return False
        if self.valid_from is not None and when < self.valid_from:
            return False
        return self.valid_to is None or when < self.valid_to


@dataclass(frozen=True, slots=True)
class Catalog:
    """The compiled content of one catalog revision."""

    currency: str
    timezone: str
    offers: dict[str, CompiledOffer] = field(hash=False)
    partners: dict[str, PartnerAgreementSpec] = field(hash=False)


@dataclass(frozen=True, slots=True)
class CatalogSource:
    """The specs a revision is compiled from; this is what a revision stores."""

    tenant: TenantSpec
    offers: dict[str, OfferSpec]
    partners: dict[str, PartnerAgreementSpec]

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant.model_dump(mode="json", by_alias=True),
            "offers": {n: s.model_dump(mode="json", by_alias=True)
                       for n, s in sorted(self.offers.items())},
            "partners": {n: s.model_dump(mode="json", by_alias=True)
                         for n, s in sorted(self.partners.items())},
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CatalogSource:
        return cls(
            tenant=TenantSpec.model_validate(body["tenant"]),
            offers={n: OfferSpec.model_validate(s) for n, s in body["offers"].items()},
            partners={n: PartnerAgreementSpec.model_validate(s)
                      for n, s in body["partners"].items()},
        )

    def digest(self) -> str:
        """Content hash: publishing identical content twice yields no new revision."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_WEEKDAYS = [d.value for d in Weekday]


def percent(text: str) -> Fraction:
    """A multiplier written in percent ("7.5") as an exact fraction (3/40)."""
    return Fraction(Decimal(text)) / 100


def _minute(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def compile_offer(name: str, spec: OfferSpec) -> CompiledOffer:
    usage: dict[Service, UsageTariff] = {}
    recurring: list[RecurringFee] = []
    one_time = 0
    for price in spec.prices:
        if price.recurring is not None:
            recurring.append(RecurringFee(price.name, parse_micros(price.recurring.amount),
                                          price.recurring.period,
                                          price.recurring.proration == "daily",
                                          price.recurring.timing == "inAdvance"))
        if price.one_time is not None:
            one_time += parse_micros(price.one_time.amount)
        if price.usage is not None:
            u = price.usage
            tiers = tuple(Tier(t.from_, t.to, parse_micros(t.unit_price), t.per) for t in u.tiers)
            bands = tuple(Band(b.name, frozenset(_WEEKDAYS.index(d) for d in b.days),
                               _minute(b.start), _minute(b.end), percent(b.multiplier_percent))
                          for b in u.bands)
            zones = {z.name: percent(z.multiplier_percent) for z in u.zones}
            usage[u.service] = UsageTariff(price.name, u.service, u.unit, u.increment,
                                           u.minimum, tiers, bands, zones,
                                           u.tier_mode == "volume")
    allowances = tuple(AllowanceRule(a.name, a.service, a.quantity, a.period, a.rollover)
                       for a in spec.allowances)
    return CompiledOffer(
        name=name, display_name=spec.display_name, description=spec.description, kind=spec.kind,
        lifecycle=spec.lifecycle_status, valid_from=spec.valid_for.start,
        valid_to=spec.valid_for.end, channels=tuple(spec.channels),
        segments=tuple(spec.segments), tax_category=spec.tax_category,
        recurring=tuple(recurring), one_time_micros=one_time, usage=usage,
        allowances=allowances, bundle=tuple(r.name for r in spec.bundle),
        partner=spec.partner_ref.name if spec.partner_ref else None,
        congestion={c.level.value: percent(c.multiplier_percent)
                    for c in spec.dynamic_pricing.congestion},
        loyalty={p.tier: percent(p.multiplier_percent) for p in spec.dynamic_pricing.loyalty},
        discounts=tuple(
            DiscountRule(d.name, percent(d.percent) if d.percent is not None else None,
                         parse_micros(d.fixed) if d.fixed is not None else None, d.cycles)
            for d in spec.discounts),
        thresholds=tuple(
            ThresholdRule(t.allowance, t.percent,
                          parse_micros(t.balance_below) if t.balance_below else None,
                          t.upsell_offer)
            for t in spec.thresholds),
    )


def check_source(source: CatalogSource) -> list[str]:
    """Semantic rules beyond the schema: references resolve, units match their service."""
    errors: list[str] = []
    tax_categories = {t.category for t in source.tenant.taxes}
    for name, spec in sorted(source.offers.items()):
        where = f"Offer {name}"
        for i, price in enumerate(spec.prices):
            if price.usage is not None and SERVICE_UNITS[price.usage.service] != price.usage.unit:
                errors.append(f"{where}: spec.prices[{i}].usage.unit: service "
                              f"{price.usage.service} is measured in "
                              f"{SERVICE_UNITS[price.usage.service]}")
        for i, allowance in enumerate(spec.allowances):
            if SERVICE_UNITS[allowance.service] != allowance.unit:
                errors.append(f"{where}: spec.allowances[{i}].unit: service {allowance.service} "
                              f"is measured in {SERVICE_UNITS[allowance.service]}")
        for i, ref in enumerate(spec.bundle):
            if ref.name not in source.offers:
                errors.append(f"{where}: spec.bundle[{i}].name: offer {ref.name!r} does not exist")
        for field_name, refs in (("requires", spec.eligibility.requires),
                                 ("excludes", spec.eligibility.excludes)):
            for i, ref_name in enumerate(refs):
                if ref_name not in source.offers:
                    errors.append(f"{where}: spec.eligibility.{field_name}[{i}]: offer "
                                  f"{ref_name!r} does not exist")
        for i, threshold in enumerate(spec.thresholds):
            if threshold.upsell_offer and threshold.upsell_offer not in source.offers:
                errors.append(f"{where}: spec.thresholds[{i}].upsellOffer: offer "
                              f"{threshold.upsell_offer!r} does not exist")
        if tax_categories and spec.tax_category not in tax_categories:
            errors.append(f"{where}: spec.taxCategory: {spec.tax_category!r} is not a tax "
                          f"category of the tenant ({', '.join(sorted(tax_categories))})")
        if spec.partner_ref and spec.partner_ref.name not in source.partners:
            errors.append(f"{where}: spec.partnerRef.name: partner agreement "
                          f"{spec.partner_ref.name!r} does not exist")
        if spec.kind is OfferKind.BUNDLE and name in {r.name for r in spec.bundle}:
            errors.append(f"{where}: spec.bundle: a bundle cannot contain itself")
    for name, agreement in sorted(source.partners.items()):
        for i, offer_name in enumerate(agreement.offer_selector.offers):
            if offer_name not in source.offers:
                errors.append(f"PartnerAgreement {name}: spec.offerSelector.offers[{i}]: offer "
                              f"{offer_name!r} does not exist")
    return errors


def compile_catalog(source: CatalogSource) -> Catalog:
    """Compile a whole tenant catalog; raise CatalogError listing every broken rule."""
    errors = check_source(source)
    if errors:
        raise CatalogError(errors)
    offers = {name: compile_offer(name, spec) for name, spec in source.offers.items()}
    return Catalog(
        currency=source.tenant.currency,
        timezone=source.tenant.timezone,
        offers={name: with_components(offer, offers) for name, offer in offers.items()},
        partners=dict(source.partners),
    )


def with_components(offer: CompiledOffer, offers: dict[str, CompiledOffer]) -> CompiledOffer:
    """A bundle carries its components' allowances (named `component.allowance`), usage
    prices for services it does not price itself, and thresholds; subscribing to the bundle
    subscribes to all of it."""
    if offer.kind is not OfferKind.BUNDLE:
        return offer
    allowances = list(offer.allowances)
    usage = dict(offer.usage)
    thresholds = list(offer.thresholds)
    for component in (offers[name] for name in offer.bundle):
        allowances += [replace(a, name=f"{component.name}.{a.name}")
                       for a in component.allowances]
        for service, tariff in component.usage.items():
            usage.setdefault(service, tariff)
        thresholds += [replace(t, allowance=f"{component.name}.{t.allowance}")
                       if t.allowance else t for t in component.thresholds]
    return replace(offer, allowances=tuple(allowances), usage=usage,
                   thresholds=tuple(thresholds))
