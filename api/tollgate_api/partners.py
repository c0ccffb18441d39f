"""The PartnerAgreement type: a catalog agreement as GraphQL, with its metered usage."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry
from strawberry.types import Info

from tollgate_api.context import Context
from tollgate_api.network_apis import NetworkApiUsage, agreement_usage
from tollgate_api.statements import SettlementStatementConnection, statement_connection
from tollgate_api.types import (
    Money,
    NetworkApiPriceTier,
    PartnerNetworkApi,
    PartnerSettlement,
    RevenueShare,
    RevenueShareTier,
)
from tollgate_core.domain.money import parse_micros
from tollgate_core.resources.partner import PartnerAgreementSpec


@strawberry.type(description="A B2B2X partner agreement of the caller's tenant. Amounts are "
                 "in the tenant's currency, like every price of the tenant.")
class PartnerAgreement:
    id: str
    partner_id: str
    display_name: str
    role: str
    offers: list[str] = strawberry.field(description="Offers whose revenue is shared.")
    revenue_share: RevenueShare
    settlement: PartnerSettlement
    network_apis: list[PartnerNetworkApi]
    catalog_revision: int

    @strawberry.field(description="Network API calls the partner made in [from, to) with "
                      "what they cost (ADR 0015).")
    async def usage(self, info: Info[Context, None],
                    from_: Annotated[datetime, strawberry.argument(name="from")],
                    to: datetime) -> NetworkApiUsage:
        return await agreement_usage(info.context, self.id, from_, to)

    @strawberry.field(description="The agreement's settlement statements, newest issued first: "
                      "revenue share, network API charges and the net (ADR 0012).")
    async def statements(self, info: Info[Context, None], first: int = 12,
                         after: str | None = None) -> SettlementStatementConnection:
        return await statement_connection(info.context, self.id, first, after)


def partner_view(name: str, spec: PartnerAgreementSpec, revision: int,
                 currency: str) -> PartnerAgreement:
    """`currency`: the tenant's, which the agreement's amounts are in."""

    def money(amount: str | None) -> Money | None:
        if amount is None:
            return None
        return Money(amount_micros=parse_micros(amount), currency=currency)

    share = spec.revenue_share
    return PartnerAgreement(
        id=name, partner_id=spec.partner.id, display_name=spec.partner.display_name,
        role=spec.role.value, offers=list(spec.offer_selector.offers),
        revenue_share=RevenueShare(
            model=share.model.value, percent=share.percent,
            per_unit_fee=money(share.per_unit_fee), payer=share.payer,
            tiers=[RevenueShareTier(from_=Money(amount_micros=parse_micros(t.from_amount),
                                                currency=currency), percent=t.percent)
                   for t in share.tiers]),
        settlement=PartnerSettlement(period=spec.settlement.period,
                                     minimum_guarantee=money(spec.settlement.minimum_guarantee),
                                     cap=money(spec.settlement.cap)),
        network_apis=[PartnerNetworkApi(
            name=a.name, price_per_call=money(a.price_per_call),
            tiers=[NetworkApiPriceTier(from_=t.from_, to=t.to, price_per_call=Money(
                amount_micros=parse_micros(t.price_per_call), currency=currency))
                for t in a.tiers or []],
            rate_limit_per_second=a.rate_limit_per_second, monthly_quota=a.monthly_quota)
            for a in spec.network_apis],
        catalog_revision=revision)
