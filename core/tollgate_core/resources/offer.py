"""Offer: a product offering with its prices and allowances (after TMF620 ProductOffering)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from pydantic import Field, model_validator

from tollgate_core.resources.common import (
    Amount,
    Cel,
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


class RecurringPrice(Spec):
    """A fee charged every period."""

    amount: Amount
    period: Period = Field(default=Period.MONTH)
    proration: Proration = Field(
        default=Proration.DAILY, description="How a partial first or last period is charged."
    )


class OneTimePrice(Spec):
    """A fee charged once, when the offer is ordered."""

    amount: Amount


class Tier(Spec):
    """A usage tier: units in [from, to) cost `unitPrice` per `per` units."""

    from_: int = Field(alias="from", ge=0, description="First unit of the tier (inclusive).")
    to: int | None = Field(default=None, ge=1, description="End of the tier (exclusive); "
                           "omit on the last tier.")
    unit_price: Amount = Field(description="Price of `per` units in this tier.")
    per: int = Field(default=1, ge=1, description="Number of units `unitPrice` is for, "
                     "e.g. 1048576 for a price per MiB.")


class UsagePrice(Spec):
    """A price for metered usage of one service, in graduated tiers."""

    service: Service
    unit: Unit = Field(description="Unit of quantities in this price (bytes, seconds, events).")
    increment: int = Field(
        default=1, ge=1, description="Each event's chargeable quantity is rounded up to a "
        "multiple of this (e.g. 60 for per-minute voice, 1024 for per-KiB data)."
    )
    minimum: int = Field(default=0, ge=0, description="Minimum chargeable quantity per event.")
    tiers: list[Tier] = Field(min_length=1, max_length=16)

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("self.tiers[0].from == 0", "tiers: the first tier must start at 0"),
        Cel(
            "self.tiers.all(t, self.tiers.indexOf(t) == size(self.tiers) - 1 || "
            "(has(t.to) && t.to > t.from))",
            "tiers: every tier but the last needs `to` greater than `from`",
        ),
        Cel(
            "size(self.tiers) < 2 || self.tiers.all(t, self.tiers.indexOf(t) == 0 || "
            "self.tiers[self.tiers.indexOf(t) - 1].to == t.from)",
            "tiers: must be contiguous (each `from` equals the previous `to`)",
        ),
    )

    @model_validator(mode="after")
    def _tiers_ordered_and_contiguous(self) -> UsagePrice:
        if self.tiers[0].from_ != 0:
            raise ValueError("tiers: the first tier must start at 0")
        for index, tier in enumerate(self.tiers):
            last = index == len(self.tiers) - 1
            if not last and (tier.to is None or tier.to <= tier.from_):
                raise ValueError(f"tiers[{index}]: every tier but the last needs `to` greater "
                                 "than `from`")
            if index and self.tiers[index - 1].to != tier.from_:
                raise ValueError(f"tiers[{index}]: must be contiguous (each `from` equals the "
                                 "previous `to`)")
        return self


class Price(Spec):
    """One ProductOfferingPrice: exactly one of recurring, oneTime or usage, per priceType."""

    name: Name
    price_type: PriceType
    recurring: RecurringPrice | None = None
    one_time: OneTimePrice | None = None
    usage: UsagePrice | None = None

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

    name: Name
    service: Service
    quantity: int = Field(ge=1, description="Units included per period, in `unit`.")
    unit: Unit
    period: Period = Field(default=Period.MONTH)
    rollover: bool = Field(default=False, description="Unused units carry into the next period.")


class Discount(Spec):
    """A percentage or fixed reduction of recurring charges, for a number of cycles."""

    name: Name
    percent: Percent | None = None
    fixed: Amount | None = None
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
    percent: int | None = Field(default=None, ge=1, le=100)
    balance_below: Amount | None = Field(default=None, description="Monetary balance level.")
    upsell_offer: Name | None = None

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
    customer_type: str = Field(default="any", pattern=r"^(any|consumer|business)$")


class OfferSpec(Spec):
    """A product offering of one tenant."""

    tenant_ref: Ref = Field(description="The Tenant this offer belongs to.")
    display_name: str = Field(min_length=1, max_length=120)
    description: str = Field(default="", max_length=2000)
    kind: OfferKind = Field(default=OfferKind.PLAN)
    lifecycle_status: LifecycleStatus = Field(default=LifecycleStatus.ACTIVE)
    valid_for: ValidFor = Field(default_factory=ValidFor)
    channels: list[Name] = Field(default_factory=list, max_length=16)
    segments: list[Name] = Field(default_factory=list, max_length=16)
    eligibility: Eligibility = Field(default_factory=Eligibility)
    prices: list[Price] = Field(default_factory=list, max_length=32)
    allowances: list[Allowance] = Field(default_factory=list, max_length=16)
    bundle: list[Ref] = Field(default_factory=list, max_length=16)
    discounts: list[Discount] = Field(default_factory=list, max_length=8)
    thresholds: list[Threshold] = Field(default_factory=list, max_length=16)
    partner_ref: Ref | None = None
    tax_category: Name = Field(default="standard")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("self.kind != 'bundle' || size(self.bundle) > 0", "bundle: a bundle needs components"),
    )

    @model_validator(mode="after")
    def _consistent(self) -> OfferSpec:
        if self.kind is OfferKind.BUNDLE and not self.bundle:
            raise ValueError("bundle: a bundle needs components")
        for kind, names in (("prices", [p.name for p in self.prices]),
                            ("allowances", [a.name for a in self.allowances])):
            if len(names) != len(set(names)):
                raise ValueError(f"{kind}: names must be unique")
        services = [p.usage.service for p in self.prices if p.usage is not None]
        if len(services) != len(set(services)):
            raise ValueError("prices: at most one usage price per service")
        allowance_names = {a.name for a in self.allowances}
        for threshold in self.thresholds:
            if threshold.allowance is not None and threshold.allowance not in allowance_names:
                raise ValueError(f"thresholds: allowance {threshold.allowance!r} is not defined")
        return self


class Offer(Resource):
    """The Offer resource."""

    metadata: ObjectMeta
    spec: OfferSpec
