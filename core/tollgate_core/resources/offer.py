"""Offer: a product offering with its prices and allowances (after TMF620 ProductOffering)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from tollgate_core.resources.common import (
    Amount,
    Cel,
    ListMapKeys,
    Multiplier,
    Name,
    ObjectMeta,
    Percent,
    Ref,
    Resource,
    Spec,
    ValidFor,
)


class OfferKind(StrEnum):
    PLAN = "plan"
    ADDON = "addon"
    BUNDLE = "bundle"


class LifecycleStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    RETIRED = "retired"


class PriceType(StrEnum):
    RECURRING = "recurring"
    ONE_TIME = "oneTime"
    USAGE = "usage"


class Period(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class Service(StrEnum):
    DATA = "data"
    VOICE = "voice"
    SMS = "sms"
    API = "api"
    SLICE = "slice"


class Unit(StrEnum):
    BYTES = "bytes"
    SECONDS = "seconds"
    EVENTS = "events"
    UNITS = "units"


SERVICE_UNITS: dict[Service, Unit] = {
    Service.DATA: Unit.BYTES,
    Service.VOICE: Unit.SECONDS,
    Service.SMS: Unit.EVENTS,
    Service.API: Unit.EVENTS,
    Service.SLICE: Unit.UNITS,
}


class Proration(StrEnum):
    NONE = "none"
    DAILY = "daily"


class Timing(StrEnum):
    IN_ADVANCE = "inAdvance"
    IN_ARREARS = "inArrears"


class RecurringPrice(Spec):
    """A fee charged every period."""

    amount: Amount = Field(description="Fee per period, in the tenant's currency "
                           "(decimal string, e.g. \"19.99\").")
    period: Period = Field(default=Period.MONTH, description="Billing period: day, week or month.")
    proration: Proration = Field(
        default=Proration.DAILY, description="How a partial first or last period is charged."
    )
    timing: Timing = Field(
        default=Timing.IN_ADVANCE,
        description="inAdvance: each invoice charges the next bill cycle (and credits unused "
        "days after a cancellation); inArrears: each invoice charges the cycle just ended.")


class OneTimePrice(Spec):
    """A fee charged once, when the offer is ordered."""

    amount: Amount = Field(description="One-time fee, in the tenant's currency "
                           "(decimal string, e.g. \"49\").")


class Tier(Spec):
    """A usage tier: units in [from, to) cost `unitPrice` per `per` units."""

    from_: int = Field(alias="from", ge=0, description="First unit of the tier (inclusive).")
    to: int | None = Field(default=None, ge=1, description="End of the tier (exclusive); "
                           "omit on the last tier.")
    unit_price: Amount = Field(description="Price of `per` units in this tier.")
    per: int = Field(default=1, ge=1, description="Number of units `unitPrice` is for, "
                     "e.g. 1048576 for a price per MiB.")


_TIERS_START_AT_ZERO = Cel("self.tiers[0].from == 0", "tiers: the first tier must start at 0")
# The two-variable comprehensions `all(i, t, ...)` (index and element) need Kubernetes >= 1.33:
# kube-apiserver's CEL base environment adds them at compatibility version 1.32, and an API
# server accepts new rules only at its own minor version minus one (k8s.io/apiserver
# pkg/cel/environment/base.go). The one-variable form with `indexOf(t)` finds the first tier
# *equal* to t, so it let a repeated tier through.
_TIERS_BOUNDED_BUT_LAST = Cel(
    "self.tiers.all(i, t, i == size(self.tiers) - 1 || (has(t.to) && t.to > t.from))",
    "tiers: every tier but the last needs `to` greater than `from`",
)
_TIERS_CONTIGUOUS = Cel(
    "self.tiers.all(i, t, i == 0 || "
    "(has(self.tiers[i - 1].to) && self.tiers[i - 1].to == t.from))",
    "tiers: must be contiguous (each `from` equals the previous `to`)",
)


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


class TimeBand(Spec):
    """A time-of-day/day-of-week band (tenant timezone) with its price multiplier; usage
    outside every band is priced at 100 %."""

    name: Name = Field(description="Band name, e.g. off-peak.")
    days: list[Weekday] = Field(
        default_factory=lambda: list(Weekday), max_length=7,
        description="Days the band applies on (default every day).")
    start: str = Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", max_length=5,
                       description="Local start time HH:MM, inclusive.")
    end: str = Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$", max_length=5,
                     description="Local end time HH:MM, exclusive (24:00 for midnight); "
                     "after `start`.")
    multiplier_percent: Multiplier = Field(description="Price in this band, in percent of "
                                           "the tier prices.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("self.start < self.end", "bands: start must be before end (HH:MM, same day)"),
    )

    @model_validator(mode="after")
    def _start_before_end(self) -> TimeBand:
        if not self.start < self.end:
            raise ValueError("bands: start must be before end (HH:MM, same day)")
        return self


class RoamingZone(Spec):
    """Usage whose `zone` attribute names this zone is priced with this multiplier."""

    name: Name = Field(description="Zone name as sent in the usage event's `zone` attribute.")
    multiplier_percent: Multiplier = Field(description="Price in this zone, in percent.")


class TierMode(StrEnum):
    GRADUATED = "graduated"
    VOLUME = "volume"


class UsagePrice(Spec):
    """A price for metered usage of one service, in graduated or volume tiers."""

    service: Service = Field(description="Metered service: data, voice, sms, api or slice.")
    unit: Unit = Field(description="Unit of quantities in this price (bytes, seconds, events).")
    increment: int = Field(
        default=1, ge=1, description="Each event's chargeable quantity is rounded up to a "
        "multiple of this (e.g. 60 for per-minute voice, 1024 for per-KiB data)."
    )
    minimum: int = Field(default=0, ge=0, description="Minimum chargeable quantity per event.")
    tiers: list[Tier] = Field(
        min_length=1, max_length=16,
        description="Tiers of the units paid in the month: the first starts at 0, each `from` "
        "equals the previous `to`, the last may be open-ended.",
    )
    tier_mode: TierMode = Field(
        default=TierMode.GRADUATED,
        description="graduated: each unit is priced by the tier it falls in (an event across a "
        "boundary is split); volume: an event's units are all priced by the tier the month's "
        "paid units reach with it (earlier events are not re-priced).")
    bands: Annotated[list[TimeBand], ListMapKeys("name")] = Field(
        default_factory=list, max_length=8,
        description="Time-of-day bands; an event spanning a band boundary is split at it "
        "(for units of seconds). Bands should not overlap; the first matching one applies.")
    zones: Annotated[list[RoamingZone], ListMapKeys("name")] = Field(
        default_factory=list, max_length=32,
        description="Roaming zones priced differently from home (events without a listed "
        "zone are priced at 100 %).")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        _TIERS_START_AT_ZERO, _TIERS_BOUNDED_BUT_LAST, _TIERS_CONTIGUOUS)

    @model_validator(mode="after")
    def _tiers_ordered_and_contiguous(self) -> UsagePrice:
        if self.tiers[0].from_ != 0:
            raise ValueError(_TIERS_START_AT_ZERO.message)
        for index, tier in enumerate(self.tiers):
            last = index == len(self.tiers) - 1
            if not last and (tier.to is None or tier.to <= tier.from_):
                raise ValueError(f"{_TIERS_BOUNDED_BUT_LAST.message}, at tiers[{index}]")
            if index and self.tiers[index - 1].to != tier.from_:
                raise ValueError(f"{_TIERS_CONTIGUOUS.message}, at tiers[{index}]")
        return self


class Price(Spec):
    """One ProductOfferingPrice: exactly one of recurring, oneTime or usage, per priceType."""

    name: Name = Field(description="Name of the price, unique within the offer.")
    price_type: PriceType = Field(
        description="recurring, oneTime or usage; names the one field that holds the price.")
    recurring: RecurringPrice | None = Field(
        default=None, description="The price when priceType is recurring.")
    one_time: OneTimePrice | None = Field(
        default=None, description="The price when priceType is oneTime.")
    usage: UsagePrice | None = Field(default=None, description="The price when priceType is usage.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel(
            "(self.priceType == 'recurring') == has(self.recurring) && "
            "(self.priceType == 'oneTime') == has(self.oneTime) && "
            "(self.priceType == 'usage') == has(self.usage)",
            "prices: set exactly the field named by priceType (recurring, oneTime or usage)",
        ),
    )

    @model_validator(mode="after")
    def _one_shape(self) -> Price:
        shapes = {
            PriceType.RECURRING: self.recurring,
            PriceType.ONE_TIME: self.one_time,
            PriceType.USAGE: self.usage,
        }
        for price_type, shape in shapes.items():
            if (price_type is self.price_type) != (shape is not None):
                raise ValueError("prices: set exactly the field named by priceType "
                                 "(recurring, oneTime or usage)")
        return self


class Allowance(Spec):
    """Units included per period, consumed before any paid usage tier."""

    name: Name = Field(description="Name of the allowance, unique within the offer.")
    service: Service = Field(description="Service the units are for: data, voice, sms, api or "
                             "slice.")
    quantity: int = Field(ge=1, description="Units included per period, in `unit`.")
    unit: Unit = Field(description="Unit of `quantity`: bytes, seconds, events or units.")
    period: Period = Field(default=Period.MONTH, description="Period the quantity is granted "
                           "for: day, week or month.")
    rollover: bool = Field(default=False, description="Unused units carry into the next period.")


class Discount(Spec):
    """A percentage or fixed reduction of recurring charges, for a number of cycles."""

    name: Name = Field(description="Name of the discount, unique within the offer.")
    percent: Percent | None = Field(
        default=None, description="Percentage off the recurring charges (decimal string).")
    fixed: Amount | None = Field(
        default=None, description="Fixed amount off the recurring charges, per bill cycle.")
    cycles: int | None = Field(default=None, ge=1, description="Bill cycles; omit for ever.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("has(self.percent) != has(self.fixed)",
            "discounts: set exactly one of percent or fixed"),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Discount:
        if (self.percent is None) == (self.fixed is None):
            raise ValueError("discounts: set exactly one of percent or fixed")
        return self


class Threshold(Spec):
    """Notify (and optionally suggest an upsell) when usage crosses a level."""

    allowance: Name | None = Field(default=None, description="Allowance the percent refers to.")
    percent: int | None = Field(
        default=None, ge=1, le=100, description="Percent of the allowance used (1-100).")
    balance_below: Amount | None = Field(
        default=None, description="Monetary balance level; notify when the balance falls below.")
    upsell_offer: Name | None = Field(
        default=None, description="Offer to suggest when the threshold is crossed.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel(
            "(has(self.percent) && has(self.allowance)) != has(self.balanceBelow)",
            "thresholds: set allowance+percent or balanceBelow",
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Threshold:
        if (self.percent is not None and self.allowance is not None) == (
            self.balance_below is not None
        ):
            raise ValueError("thresholds: set allowance+percent or balanceBelow")
        return self


class Eligibility(Spec):
    """Who may order the offer."""

    requires: list[Name] = Field(default_factory=list, description="Offers the customer must hold.")
    excludes: list[Name] = Field(default_factory=list, description="Offers that rule this out.")
    customer_type: str = Field(default="any", pattern=r"^(any|consumer|business)$",
                               description="Customer type allowed: any, consumer or business.")


_BUNDLE_NEEDS_COMPONENTS = Cel(
    "self.kind != 'bundle' || size(self.bundle) > 0", "bundle: a bundle needs components")
# At most 32 x 32 steps (prices has maxItems 32): far below the API server's cost limit.
_ONE_USAGE_PRICE_PER_SERVICE = Cel(
    "self.prices.all(p, !has(p.usage) || "
    "self.prices.exists_one(q, has(q.usage) && q.usage.service == p.usage.service))",
    "prices: at most one usage price per service",
)
_THRESHOLD_ALLOWANCE_DEFINED = Cel(
    "self.thresholds.all(t, !has(t.allowance) || "
    "self.allowances.exists(a, a.name == t.allowance))",
    "thresholds: a threshold's allowance must be one of `allowances`",
)


class CongestionLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class CongestionPrice(Spec):
    """Usage in a cell whose latest reported load is `level` is priced with this multiplier."""

    level: CongestionLevel = Field(description="Cell load level from tg.<tenant>.oss.congestion.")
    multiplier_percent: Multiplier = Field(description="Price at this load, in percent.")


class LoyaltyPrice(Spec):
    """Customers in loyalty tier `tier` pay this share of the usage price."""

    tier: Name = Field(description="Loyalty tier of the customer, e.g. gold.")
    multiplier_percent: Multiplier = Field(description="Price for this tier, in percent.")


class DynamicPricing(Spec):
    """Prices that follow the network's state and the customer's loyalty."""

    congestion: Annotated[list[CongestionPrice], ListMapKeys("level")] = Field(
        default_factory=list, max_length=4,
        description="Multipliers by the load level of the event's cell (attribute `cell`); "
        "cells without a report are priced at 100 %.")
    loyalty: Annotated[list[LoyaltyPrice], ListMapKeys("tier")] = Field(
        default_factory=list, max_length=8,
        description="Multipliers by the customer's loyalty tier; customers without a listed "
        "tier are priced at 100 %.")


class OfferSpec(Spec):
    """A product offering of one tenant."""

    tenant_ref: Ref = Field(description="The Tenant this offer belongs to.")
    display_name: str = Field(min_length=1, max_length=120,
                              description="Name shown to customers in every channel.")
    description: str = Field(default="", max_length=2000,
                             description="Marketing description shown to customers.")
    kind: OfferKind = Field(
        default=OfferKind.PLAN,
        description="plan: a base subscription; addon: bought on top of a plan; bundle: a "
        "package of the offers in `bundle`.",
    )
    lifecycle_status: LifecycleStatus = Field(
        default=LifecycleStatus.ACTIVE,
        description="draft: not orderable; active: orderable in its validity period; retired: "
        "no new orders, existing subscriptions keep it.",
    )
    valid_for: ValidFor = Field(default_factory=ValidFor,
                                description="Period in which the offer may be ordered.")
    channels: list[Name] = Field(default_factory=list, max_length=16,
                                 description="Sales channels that show the offer (e.g. web, app).")
    segments: list[Name] = Field(default_factory=list, max_length=16,
                                 description="Customer segments the offer targets.")
    eligibility: Eligibility = Field(default_factory=Eligibility,
                                     description="Who may order the offer.")
    prices: Annotated[list[Price], ListMapKeys("name")] = Field(
        default_factory=list, max_length=32,
        description="ProductOfferingPrices of the offer: recurring fees, one-time fees and "
        "usage prices in tiers; names are unique, at most one usage price per service.",
    )
    allowances: Annotated[list[Allowance], ListMapKeys("name")] = Field(
        default_factory=list, max_length=16,
        description="Units included per period, used before any usage price applies; names "
        "are unique.")
    bundle: list[Ref] = Field(default_factory=list, max_length=16,
                              description="Component offers, when kind is bundle.")
    discounts: Annotated[list[Discount], ListMapKeys("name")] = Field(
        default_factory=list, max_length=8,
        description="Discounts on the recurring charges; names are unique.")
    thresholds: list[Threshold] = Field(
        default_factory=list, max_length=16,
        description="Usage or balance levels that notify the customer and may suggest an upsell.")
    dynamic_pricing: DynamicPricing = Field(
        default_factory=DynamicPricing,
        description="Network-driven price multipliers (cell congestion).")
    partner_ref: Ref | None = Field(
        default=None, description="PartnerAgreement whose revenue share applies to the offer.")
    tax_category: Name = Field(default="standard",
                               description="Tax category, one of the tenant's `taxes`.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        _BUNDLE_NEEDS_COMPONENTS, _ONE_USAGE_PRICE_PER_SERVICE, _THRESHOLD_ALLOWANCE_DEFINED)

    @model_validator(mode="after")
    def _consistent(self) -> OfferSpec:
        if self.kind is OfferKind.BUNDLE and not self.bundle:
            raise ValueError(_BUNDLE_NEEDS_COMPONENTS.message)
        services = [p.usage.service for p in self.prices if p.usage is not None]
        if len(services) != len(set(services)):
            raise ValueError(_ONE_USAGE_PRICE_PER_SERVICE.message)
        allowance_names = {a.name for a in self.allowances}
        for threshold in self.thresholds:
            if threshold.allowance is not None and threshold.allowance not in allowance_names:
                raise ValueError(f"{_THRESHOLD_ALLOWANCE_DEFINED.message} "
                                 f"(no allowance {threshold.allowance!r})")
        return self


class Offer(Resource):
    """A product offering of a tenant (after TMF620 ProductOffering): prices, allowances,
    discounts; the operator publishes it in a catalog revision."""

    metadata: ObjectMeta
    spec: OfferSpec
