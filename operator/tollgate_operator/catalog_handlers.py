"""Kopf registrations for Offers and PartnerAgreements: glue to :mod:`catalog_logic`."""

from __future__ import annotations

from typing import Any

import kopf

from tollgate_core.resources import API_GROUP, API_VERSION
from tollgate_operator.conditions import ConditionType, Reason, holds
from tollgate_operator.runtime import Runtime
from tollgate_operator.settings import Settings
from tollgate_operator.writing import apply_outcome, post_events

OFFERS = (API_GROUP, API_VERSION, "offers")
PARTNERS = (API_GROUP, API_VERSION, "partneragreements")


def has_invalid_reference(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    """Timer filter: the current generation refers to something missing."""
    return holds(status.get("conditions"), ConditionType.VALID, int(meta.get("generation", 1)),
                 reasons=[Reason.INVALID_REFERENCE])


def register(registry: kopf.OperatorRegistry, settings: Settings, runtime: Runtime) -> None:
    catalog, metrics = runtime.catalog, runtime.metrics
    every = settings.revalidate_interval_s

    @kopf.on.resume(*OFFERS, id="reconcile", registry=registry)
    @kopf.on.create(*OFFERS, id="reconcile", registry=registry)
    @kopf.on.update(*OFFERS, id="reconcile", registry=registry)
    async def reconcile_offer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        apply_outcome(patch, body, await metrics.track("Offer", catalog.reconcile_offer(body)))

    @kopf.timer(*OFFERS, id="revalidate", interval=every, initial_delay=every,
                when=has_invalid_reference, registry=registry)
    async def revalidate_offer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome = await metrics.track("Offer", catalog.reconcile_offer(body, revalidate=True))
        apply_outcome(patch, body, outcome, retry=False)

    @kopf.on.delete(*OFFERS, id="retire", registry=registry)
    async def retire_offer(body: kopf.Body, **_: Any) -> None:
        outcome = await metrics.track("Offer", catalog.retire_offer(body))
        post_events(body, outcome)
        if outcome.retry_after_s is not None:
            raise kopf.TemporaryError(outcome.retry_message, delay=outcome.retry_after_s)

    @kopf.on.resume(*PARTNERS, id="reconcile", registry=registry)
    @kopf.on.create(*PARTNERS, id="reconcile", registry=registry)
    @kopf.on.update(*PARTNERS, id="reconcile", registry=registry)
    async def reconcile_partner(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome = await metrics.track("PartnerAgreement", catalog.reconcile_partner(body))
        apply_outcome(patch, body, outcome)

    @kopf.timer(*PARTNERS, id="revalidate", interval=every, initial_delay=every,
                when=has_invalid_reference, registry=registry)
    async def revalidate_partner(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome = await metrics.track("PartnerAgreement",
                                      catalog.reconcile_partner(body, revalidate=True))
        apply_outcome(patch, body, outcome, retry=False)
