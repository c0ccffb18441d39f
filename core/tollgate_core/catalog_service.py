"""Reconcile resource specs into tenants and catalog revisions.

The one implementation of "apply a Tenant/Offer/PartnerAgreement": local mode (`tollgate apply`,
`tollgate dev`) and the Kubernetes operator both call it, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tollgate_core.domain.catalog import CatalogError, CatalogSource, compile_catalog
from tollgate_core.resources.offer import LifecycleStatus, OfferSpec
from tollgate_core.resources.partner import PartnerAgreementSpec
from tollgate_core.resources.tenant import TenantSpec
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx


class UnknownTenant(LookupError):
    """The referenced tenant does not exist (yet); retry once it does."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    """`revision` is set when valid; `errors` name field path and rule when not."""

    revision: int | None
    created: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


async def apply_tenant(pool: Pool, tenant: str, spec: TenantSpec) -> None:
    async with tenant_tx(pool, tenant) as conn:
        await catalog_repo.upsert_tenant(conn, tenant, spec)


async def _publish(pool: Pool, tenant: str, change: str,
                   offers: dict[str, OfferSpec] | None = None,
                   partners: dict[str, PartnerAgreementSpec] | None = None) -> PublishResult:
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        if spec is None:
            raise UnknownTenant(f"tenant {tenant!r} does not exist")
        latest = await catalog_repo.latest_revision(conn, tenant)
        current = latest.source if latest else CatalogSource(spec, {}, {})
        source = CatalogSource(
            tenant=spec,
            offers={**current.offers, **(offers or {})},
            partners={**current.partners, **(partners or {})},
        )
        try:
            compile_catalog(source)
        except CatalogError as exc:
            related = [e for e in exc.errors if change and change in e] or exc.errors
            return PublishResult(None, errors=related)
        revision, created = await catalog_repo.publish_revision(conn, tenant, source)
        return PublishResult(revision, created)


async def apply_catalog(pool: Pool, tenant: str, offers: dict[str, OfferSpec],
                        partners: dict[str, PartnerAgreementSpec]) -> PublishResult:
    """Publish several offers and partner agreements as one revision (they may refer to
    each other)."""
    return await _publish(pool, tenant, "", offers=offers, partners=partners)


async def apply_offer(pool: Pool, tenant: str, name: str, spec: OfferSpec) -> PublishResult:
    """Validate the offer against the tenant's catalog and publish the next revision."""
    return await _publish(pool, tenant, f"Offer {name}", offers={name: spec})


async def retire_offer(pool: Pool, tenant: str, name: str) -> PublishResult:
    """Deleting an Offer retires it: subscriptions keep the revision they were sold under."""
    async with tenant_tx(pool, tenant) as conn:
        latest = await catalog_repo.latest_revision(conn, tenant)
    if latest is None or name not in latest.source.offers:
        return PublishResult(latest.revision if latest else None)
    retired = latest.source.offers[name].model_copy(
        update={"lifecycle_status": LifecycleStatus.RETIRED})
    return await _publish(pool, tenant, f"Offer {name}", offers={name: retired})


async def apply_partner(pool: Pool, tenant: str, name: str,
                        spec: PartnerAgreementSpec) -> PublishResult:
    return await _publish(pool, tenant, f"PartnerAgreement {name}", partners={name: spec})
