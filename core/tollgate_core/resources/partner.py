"""PartnerAgreement: a B2B2X partner, its revenue share, settlement and network APIs."""

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

    id: Name
    display_name: str = Field(min_length=1, max_length=120)
    contact_email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    settlement_currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")


class ShareTier(Spec):
    """Above `fromAmount` of monthly gross, the partner gets `percent`."""

    from_amount: Amount
    percent: Percent


class RevenueShare(Spec):
    """How revenue from the selected offers is split with the partner."""

    model: ShareModel
    percent: Percent | None = Field(default=None, description="Partner share, for percentage.")
    per_unit_fee: Amount | None = Field(default=None, description="Fee per unit, for perUnitFee.")
    tiers: list[ShareTier] = Field(default_factory=list, max_length=8)
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

    period: str = Field(default="monthly", pattern=r"^(realtime|daily|monthly)$")
    minimum_guarantee: Amount | None = None
    cap: Amount | None = None


class NetworkApi(Spec):
    """A network API (e.g. CAMARA QoD) the partner may call, and its price."""

    name: Name
    price_per_call: Amount | None = None
    rate_limit_per_second: int = Field(default=10, ge=1, le=100_000)
    monthly_quota: int | None = Field(default=None, ge=1)


class OfferSelector(Spec):
    """Which offers' revenue is shared."""

    offers: list[Name] = Field(default_factory=list, max_length=64)
    match_labels: dict[str, str] = Field(default_factory=dict)


class PartnerAgreementSpec(Spec):
    """A B2B2X partner agreement of one tenant."""

    tenant_ref: Ref
    partner: Partner
    role: PartnerRole
    offer_selector: OfferSelector = Field(default_factory=OfferSelector)
    revenue_share: RevenueShare
    settlement: Settlement = Field(default_factory=Settlement)
    network_apis: list[NetworkApi] = Field(default_factory=list, max_length=32)
    valid_for: ValidFor = Field(default_factory=ValidFor)


class PartnerAgreement(Resource):
    """The PartnerAgreement resource."""

    metadata: ObjectMeta
    spec: PartnerAgreementSpec
