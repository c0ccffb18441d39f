"""Offers and PartnerAgreements: validate, publish into the tenant's next catalog revision.

Every decision maps to a condition: a spec the schema models refuse is `Valid=False,
InvalidSpec` (permanent until the next generation); a spec whose references do not resolve is
`Valid=False, InvalidReference` (validated again on a timer, as the reference may be applied
later); a Tenant or database not ready yet is temporary. An invalid resource never touches the
published catalog: `catalog_service` publishes only what compiles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from tollgate_core import catalog_service
from tollgate_core.catalog_service import PublishResult, UnknownTenant
from tollgate_core.resources import OfferSpec, PartnerAgreementSpec
from tollgate_core.resources.common import describe_validation_error
from tollgate_core.store import partner_keys
from tollgate_core.store.db import Pool
from tollgate_operator import manifests
from tollgate_operator.batching import PublishBatcher
from tollgate_operator.conditions import (
    Condition,
    ConditionType,
    Reason,
    Status,
    holds,
    merge_conditions,
    timestamp,
)
from tollgate_operator.credentials import ensure_secret
from tollgate_operator.databases import DATABASE_OUTAGES, CatalogStores, TenantNotReady
from tollgate_operator.kube import KubeClient
from tollgate_operator.manifests import Owner
from tollgate_operator.outcome import Event, Outcome
from tollgate_operator.settings import Settings

SpecT = TypeVar("SpecT", OfferSpec, PartnerAgreementSpec)
Publish = Callable[[Pool, str, str, SpecT], Awaitable[PublishResult]]
MAX_ERRORS = 64  # the CRD's limit on status.validationErrors
KEY_NOT_REGISTERED: tuple[type[BaseException], ...] = (TenantNotReady, *DATABASE_OUTAGES)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of validating and publishing one generation."""

    valid: Status
    reason: Reason
    message: str
    errors: tuple[str, ...] = ()
    revision: int | None = None
    created: bool = False
    retry: bool = False


def already_reconciled(status: Mapping[str, Any], generation: int, done: ConditionType,
                       revalidate: bool) -> bool:
    """Skip work for a generation that was published (`done` is True), or refused for good."""
    conditions = status.get("conditions")
    if holds(conditions, ConditionType.VALID, generation, reasons=[Reason.INVALID_SPEC]):
        return True
    if not revalidate and holds(conditions, ConditionType.VALID, generation,
                                reasons=[Reason.INVALID_REFERENCE]):
        return True
    return holds(conditions, done, generation)


def parse_spec(model: type[SpecT], raw: Mapping[str, Any]) -> SpecT | Verdict:
    """The spec, or an `InvalidSpec` verdict naming each field path and rule broken.

    The CRD runs the same rules, so this catches what it cannot (or an older CRD) lets through.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = describe_validation_error(exc)
        return Verdict(Status.FALSE, Reason.INVALID_SPEC, "; ".join(errors), tuple(errors))


class CatalogController:
    """Publishes Offers and PartnerAgreements through `tollgate_core.catalog_service`."""

    def __init__(self, settings: Settings, kube: KubeClient, stores: CatalogStores,
                 batcher: PublishBatcher) -> None:
        self._settings = settings
        self._kube = kube
        self._stores = stores
        self._batcher = batcher

    async def _verdict(self, namespace: str, name: str, raw: Mapping[str, Any],
                       model: type[SpecT], publish: Publish[SpecT]) -> Verdict:
        spec = parse_spec(model, raw)
        if isinstance(spec, Verdict):
            return spec
        tenant = spec.tenant_ref.name
        try:
            pool = await self._stores.pool_for(namespace, tenant)
            result = await publish(pool, tenant, name, spec)
        except TenantNotReady as exc:
            return Verdict(Status.UNKNOWN, Reason.WAITING_FOR_TENANT,
                           f"{exc.message} ({exc.reason})", retry=True)
        except UnknownTenant:
            return Verdict(Status.UNKNOWN, Reason.WAITING_FOR_TENANT,
                           f"Tenant {namespace}/{tenant} is not in its database yet", retry=True)
        except DATABASE_OUTAGES as exc:
            return Verdict(Status.UNKNOWN, Reason.DATABASE_UNREACHABLE,
                           f"{type(exc).__name__}: {exc}", retry=True)
        if result.errors:
            return Verdict(Status.FALSE, Reason.INVALID_REFERENCE, "; ".join(result.errors),
                           tuple(result.errors))
        return Verdict(Status.TRUE, Reason.VALIDATED, "spec and references are valid",
                       revision=result.revision, created=result.created)

    # ------------------------------------------------------------------ Offer

    async def reconcile_offer(self, body: Mapping[str, Any], *,
                              revalidate: bool = False) -> Outcome:
        meta, status = body["metadata"], body.get("status") or {}
        generation = int(meta.get("generation", 1))
        if already_reconciled(status, generation, ConditionType.PUBLISHED, revalidate):
            return Outcome()
        verdict = await self._verdict(meta["namespace"], meta["name"], body.get("spec") or {},
                                      OfferSpec, self._batcher.apply_offer)
        return offer_outcome(status, generation, verdict, self._retry(verdict))

    async def retire_offer(self, body: Mapping[str, Any]) -> Outcome:
        """Deleting an Offer retires it in the tenant's next revision (subscribers keep theirs).

        A Tenant that is gone leaves nothing to retire; errors are retried, as a finalizer
        that gave up would leave the offer on sale.
        """
        meta = body["metadata"]
        tenant = str(((body.get("spec") or {}).get("tenantRef") or {}).get("name", ""))
        try:
            pool = await self._stores.pool_for(meta["namespace"], tenant)
            result = await catalog_service.retire_offer(pool, tenant, meta["name"])
        except TenantNotReady as exc:
            if exc.reason is Reason.WAITING_FOR_TENANT:
                return Outcome(events=[Event(False, "NotRetired",
                                             f"{exc.message}: no catalog to retire it from")])
            return Outcome(retry_after_s=self._settings.tenant_wait_s, retry_message=exc.message)
        except DATABASE_OUTAGES as exc:
            return Outcome(retry_after_s=self._settings.tenant_wait_s,
                           retry_message=f"{type(exc).__name__}: {exc}")
        if result.errors:
            message = "cannot retire: " + "; ".join(result.errors)
            return Outcome(events=[Event(True, "RetireFailed", message)],
                           retry_after_s=self._settings.revalidate_interval_s,
                           retry_message=message)
        if result.revision is None:
            return Outcome(events=[Event(False, "NotRetired", "never published; nothing to "
                                         "retire")])
        return Outcome(events=[Event(False, "Retired",
                                     f"retired in catalog revision {result.revision}")])

    # ------------------------------------------------------------------ PartnerAgreement

    async def reconcile_partner(self, body: Mapping[str, Any], *,
                                revalidate: bool = False) -> Outcome:
        meta, status = body["metadata"], body.get("status") or {}
        generation = int(meta.get("generation", 1))
        if already_reconciled(status, generation, ConditionType.READY, revalidate):
            return Outcome()
        verdict = await self._verdict(meta["namespace"], meta["name"], body.get("spec") or {},
                                      PartnerAgreementSpec, self._batcher.apply_partner)
        secret_name = None
        if verdict.valid is Status.TRUE:
            generated = manifests.partner_credentials(meta["name"])
            tenant = str(body["spec"]["tenantRef"]["name"])
            values = await ensure_secret(self._kube, Owner.of(body), meta["namespace"], tenant,
                                         "partner-credentials", generated)
            # The API accepts the key once its digest is in the tenant's database.
            try:
                pool = await self._stores.pool_for(meta["namespace"], tenant)
                await partner_keys.register(pool, tenant, meta["name"],
                                            values[manifests.API_KEY])
            except KEY_NOT_REGISTERED as exc:
                verdict = Verdict(Status.UNKNOWN, Reason.DATABASE_UNREACHABLE,
                                  f"API key not registered: {type(exc).__name__}: {exc}",
                                  retry=True)
            else:
                secret_name = generated.name
        return partner_outcome(status, generation, verdict, secret_name, self._retry(verdict))

    def _retry(self, verdict: Verdict) -> float | None:
        return self._settings.tenant_wait_s if verdict.retry else None


def _events(verdict: Verdict, previous: Mapping[str, Any], revision_key: str) -> list[Event]:
    if verdict.valid is Status.FALSE:
        return [Event(True, verdict.reason, verdict.message)]
    if verdict.valid is Status.TRUE and (verdict.created
                                         or previous.get(revision_key) != verdict.revision):
        return [Event(False, "Published", f"catalog revision {verdict.revision}")]
    return []


def offer_outcome(previous: Mapping[str, Any], generation: int, verdict: Verdict,
                  retry_after_s: float | None, now: datetime | None = None) -> Outcome:
    """The Offer's status for a verdict; `publishedRevision` changes only when published."""
    kept = previous.get("publishedRevision")
    in_force = (f"catalog revision {kept} stays in force" if kept is not None
                else "it was never published")
    status: dict[str, Any] = {}
    if verdict.valid is Status.TRUE:
        published = Condition(ConditionType.PUBLISHED, Status.TRUE, Reason.PUBLISHED,
                              f"published in catalog revision {verdict.revision}")
        status["publishedRevision"] = verdict.revision
        if verdict.revision != kept or not previous.get("lastPublishedTime"):
            status["lastPublishedTime"] = timestamp(now)
        status["validationErrors"] = []
    elif verdict.retry:
        published = Condition(ConditionType.PUBLISHED, Status.FALSE, verdict.reason,
                              f"generation {generation} not published yet; {in_force}")
    else:
        published = Condition(ConditionType.PUBLISHED, Status.FALSE, Reason.NOT_PUBLISHED,
                              f"generation {generation} is not valid; {in_force}")
        status["validationErrors"] = list(verdict.errors[:MAX_ERRORS])
    valid = Condition(ConditionType.VALID, verdict.valid, verdict.reason, verdict.message)
    status["conditions"] = merge_conditions(previous.get("conditions"), [valid, published],
                                            generation, now)
    return Outcome(status, _events(verdict, previous, "publishedRevision"), retry_after_s,
                   verdict.message if retry_after_s else "")


def partner_outcome(previous: Mapping[str, Any], generation: int, verdict: Verdict,
                    secret_name: str | None, retry_after_s: float | None,
                    now: datetime | None = None) -> Outcome:
    """The PartnerAgreement's status: Valid, and Ready once published with its API key."""
    status: dict[str, Any] = {}
    if verdict.valid is Status.TRUE and secret_name is not None:
        ready = Condition(ConditionType.READY, Status.TRUE, Reason.PUBLISHED,
                          f"settlement rules in catalog revision {verdict.revision}; API key "
                          f"in Secret {secret_name}")
        status["activeRevision"] = verdict.revision
        status["credentialsSecretRef"] = {"name": secret_name}
    else:
        kept = previous.get("activeRevision")
        in_force = (f"catalog revision {kept} stays in force" if kept is not None
                    else "it was never published")
        ready = Condition(ConditionType.READY, Status.FALSE,
                          verdict.reason if verdict.retry else Reason.NOT_PUBLISHED,
                          f"generation {generation} not published; {in_force}")
    valid = Condition(ConditionType.VALID, verdict.valid, verdict.reason, verdict.message)
    status["conditions"] = merge_conditions(previous.get("conditions"), [valid, ready],
                                            generation, now)
    return Outcome(status, _events(verdict, previous, "activeRevision"), retry_after_s,
                   verdict.message if retry_after_s else "")
