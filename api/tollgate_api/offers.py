"""Map compiled offers to their GraphQL view."""

from __future__ import annotations

from tollgate_api.types import Money, Offer, OfferAllowance, OfferPrice, PriceTier
from tollgate_core.domain.catalog import CompiledOffer


def offer_view(offer: CompiledOffer, currency: str, revision: int) -> Offer:
    prices = [OfferPrice(name=f.price_name, price_type="recurring",
                         amount=Money(amount_micros=f.amount_micros, currency=currency),
                         period=f.period.value, service=None, tiers=[])
              for f in offer.recurring]
    if offer.one_time_micros:
        prices.append(OfferPrice(name="one-time", price_type="oneTime",
                                 amount=Money(amount_micros=offer.one_time_micros,
                                              currency=currency),
                                 period=None, service=None, tiers=[]))
    for tariff in offer.usage.values():
        prices.append(OfferPrice(
            name=tariff.price_name, price_type="usage", amount=None, period=None,
            service=tariff.service.value,
            tiers=[PriceTier(from_=t.start, to=t.end, per=t.per,
                             unit_price=Money(amount_micros=t.price_micros, currency=currency))
                   for t in tariff.tiers]))
    return Offer(
        id=offer.name, display_name=offer.display_name, description=offer.description,
        kind=offer.kind.value, lifecycle_status=offer.lifecycle.value,
        channels=list(offer.channels), segments=list(offer.segments), prices=prices,
        allowances=[OfferAllowance(name=a.name, service=a.service.value, quantity=a.quantity,
                                   unit=a.service.value and _unit(a.service.value),
                                   period=a.period.value) for a in offer.allowances],
        catalog_revision=revision,
    )


def _unit(service: str) -> str:
    from tollgate_core.resources.offer import SERVICE_UNITS, Service

    return SERVICE_UNITS[Service(service)].value
