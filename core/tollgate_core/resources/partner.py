"""PartnerAgreement: a B2B2X partner, its revenue share, settlement and network APIs."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from tollgate_core.resources.common import (
    Amount,
    Cel,
    CurrencyCode,
    ListMapKeys,
    Name,
    ObjectMeta,
    Percent,
    Ref,
    Resource,
    Spec,
    ValidFor,
)


class PartnerRole(StrEnum):
    CONTENT_PROVIDER = "contentProvider"
    RESELLER = "reseller"
    API_CONSUMER = "apiConsumer"
    MVNO = "mvno"


class ShareModel(StrEnum):
    PERCENTAGE = "percentage"
    PER_UNIT_FEE = "perUnitFee"
    TIERED = "tiered"


class Partner(Spec):
    """Who the partner is."""

    id: Name = Field(description="Stable identifier of the partner within the tenant.")
    display_name: str = Field(min_length=1, max_length=120,
                              description="Partner name on settlement statements.")
    contact_email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
                               description="Where settlement statements are sent.")
    settlement_currency: CurrencyCode = Field(
        description="ISO 4217 code the partner is settled in, e.g. EUR.")


class ShareTier(Spec):
    """Above `fromAmount` of monthly gross, the partner gets `percent`."""

    from_amount: Amount = Field(description="Monthly gross revenue from which the tier applies.")
    percent: Percent = Field(description="Partner share in this tier, in percent.")


class RevenueShare(Spec):
    """How revenue from the selected offers is split with the partner."""

    model: ShareModel = Field(
        description="percentage: a share of revenue; perUnitFee: a fee per unit used; tiered: "
        "a share that grows with monthly gross.")
    percent: Percent | None = Field(default=None, description="Partner share, for percentage.")
    per_unit_fee: Amount | None = Field(default=None, description="Fee per unit, for perUnitFee.")
    tiers: list[ShareTier] = Field(default_factory=list, max_length=8,
                                   description="Share tiers, for tiered.")
    payer: str = Field(default="operator", pattern=r"^(operator|partner)$",
                       description="Who pays the share to whom.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("self.model != 'percentage' || has(self.percent)", "revenueShare.percent is required "
            "for model percentage"),
        Cel("self.model != 'perUnitFee' || has(self.perUnitFee)", "revenueShare.perUnitFee is "
            "required for model perUnitFee"),
        Cel("self.model != 'tiered' || size(self.tiers) > 0", "revenueShare.tiers is required for "
            "model tiered"),
    )

    @model_validator(mode="after")
    def _shape(self) -> RevenueShare:
        if self.model is ShareModel.PERCENTAGE and self.percent is None:
            raise ValueError("revenueShare.percent is required for model percentage")
        if self.model is ShareModel.PER_UNIT_FEE and self.per_unit_fee is None:
            raise ValueError("revenueShare.perUnitFee is required for model perUnitFee")
        if self.model is ShareModel.TIERED and not self.tiers:
            raise ValueError("revenueShare.tiers is required for model tiered")
        return self


class Settlement(Spec):
    """When and within which bounds the partner is settled."""

    period: str = Field(default="monthly", pattern=r"^(realtime|daily|monthly)$",
                        description="How often settlement statements are made: realtime, daily "
                        "or monthly.")
    minimum_guarantee: Amount | None = Field(
        default=None, description="Least the partner receives per period.")
    cap: Amount | None = Field(default=None, description="Most the partner receives per period.")


class NetworkApiTier(Spec):
    """Calls [from, to) of a calendar month (tenant timezone, from 0) cost `pricePerCall` each."""

    from_: int = Field(alias="from", ge=0, le=1_000_000_000_000,
                       description="First call of the tier, counted from 0 in each calendar "
                       "month of the tenant's timezone (inclusive): calls 1 to 1,000 of a "
                       "month are [0, 1000).")
    to: int | None = Field(default=None, ge=1, le=1_000_000_000_000,
                           description="End of the tier (exclusive); omit on the last tier, "
                           "which has none.")
    price_per_call: Amount = Field(description="Price of each call in this tier, in the "
                                   "tenant's currency.")


_API_ONE_PRICE = Cel("!has(self.pricePerCall) || !has(self.tiers)",
                     "networkApis: set pricePerCall or tiers, not both")
_API_TIERS_START_AT_ZERO = Cel(
    "!has(self.tiers) || self.tiers[0].from == 0",
    "networkApis.tiers: the first tier must start at call 0 (the month's first call)")
# Two-variable comprehensions need Kubernetes >= 1.33, as the Offer's tier rules do.
_API_TIERS_BOUNDED_BUT_LAST = Cel(
    "!has(self.tiers) || self.tiers.all(i, t, i == size(self.tiers) - 1 || "
    "(has(t.to) && t.to > t.from))",
    "networkApis.tiers: every tier but the last needs `to` greater than `from`")
_API_TIERS_CONTIGUOUS = Cel(
    "!has(self.tiers) || self.tiers.all(i, t, i == 0 || "
    "(has(self.tiers[i - 1].to) && self.tiers[i - 1].to == t.from))",
    "networkApis.tiers: must be ascending and contiguous (each `from` equals the previous "
    "`to`)")
_API_TIERS_OPEN_ENDED = Cel(
    "!has(self.tiers) || !has(self.tiers[size(self.tiers) - 1].to)",
    "networkApis.tiers: the last tier must be open-ended (no `to`); bound the calls with "
    "monthlyQuota")


class NetworkApi(Spec):
    """A network API (e.g. CAMARA QoD) the partner may call: per-call or tiered price, limits."""

    name: Name = Field(description="Name of the network API, e.g. qod.")
    price_per_call: Amount | None = Field(
        default=None, description="Price the partner pays per call, in the tenant's currency; "
        "omit (and omit tiers) for no charge.")
    tiers: list[NetworkApiTier] | None = Field(
        default=None, min_length=1, max_length=16,
        description="Graduated prices instead of pricePerCall: each call of a calendar month "
        "(tenant timezone) costs the price of the tier its number falls in. The first tier "
        "starts at 0, each `from` equals the previous `to`, the last has no `to`.")
    rate_limit_per_second: int = Field(default=10, ge=1, le=100_000,
                                       description="Calls per second allowed.")
    monthly_quota: int | None = Field(default=None, ge=1,
                                      description="Calls per month allowed; omit for no quota.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        _API_ONE_PRICE, _API_TIERS_START_AT_ZERO, _API_TIERS_BOUNDED_BUT_LAST,
        _API_TIERS_CONTIGUOUS, _API_TIERS_OPEN_ENDED)

    @model_validator(mode="after")
    def _one_price_and_tiers_in_order(self) -> NetworkApi:
        if self.price_per_call is not None and self.tiers is not None:
            raise ValueError(f"{_API_ONE_PRICE.message} (networkApis {self.name!r})")
        tiers = self.tiers or []
        where = f"networkApis {self.name!r}"
        if tiers and tiers[0].from_ != 0:
            raise ValueError(f"{_API_TIERS_START_AT_ZERO.message}, at {where} tiers[0]")
        for index, tier in enumerate(tiers):
            last = index == len(tiers) - 1
            if not last and (tier.to is None or tier.to <= tier.from_):
                raise ValueError(f"{_API_TIERS_BOUNDED_BUT_LAST.message}, at {where} "
                                 f"tiers[{index}]")
            if index and tiers[index - 1].to != tier.from_:
                raise ValueError(f"{_API_TIERS_CONTIGUOUS.message}, at {where} tiers[{index}]")
            if last and tier.to is not None:
                raise ValueError(f"{_API_TIERS_OPEN_ENDED.message}, at {where} tiers[{index}]")
        return self


class OfferSelector(Spec):
    """Which offers' revenue is shared."""

    offers: list[Name] = Field(default_factory=list, max_length=64,
                               description="Names of Offers of the tenant.")
    match_labels: dict[str, str] = Field(default_factory=dict,
                                         description="Labels selecting further Offers.")


class PartnerAgreementSpec(Spec):
    """A B2B2X partner agreement of one tenant."""

    tenant_ref: Ref = Field(description="The Tenant this agreement belongs to.")
    partner: Partner = Field(description="Who the partner is.")
    role: PartnerRole = Field(
        description="contentProvider, reseller, apiConsumer (of network APIs) or mvno.")
    offer_selector: OfferSelector = Field(default_factory=OfferSelector,
                                          description="Offers whose revenue is shared.")
    revenue_share: RevenueShare = Field(description="How revenue is split with the partner.")
    settlement: Settlement = Field(default_factory=Settlement,
                                   description="When and within which bounds it is settled.")
    network_apis: Annotated[list[NetworkApi], ListMapKeys("name")] = Field(
        default_factory=list, max_length=32,
        description="Network APIs the partner may call, with prices and limits; names are "
        "unique.")
    valid_for: ValidFor = Field(default_factory=ValidFor,
                                description="Period in which the agreement applies.")


class PartnerAgreement(Resource):
    """A B2B2X partner of a tenant: revenue share, settlement and network APIs; the operator
    compiles it into settlement rules and issues the partner's API key."""

    metadata: ObjectMeta
    spec: PartnerAgreementSpec
