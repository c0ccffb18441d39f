"""Publishing concurrent changes of a tenant in batches, against the real catalog store."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.operator.operator_fixtures import offer_document, tenant_spec
from tollgate_core import catalog_service
from tollgate_core.resources import OfferSpec, TenantSpec
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_operator.batching import PublishBatcher


def _offer(tenant: str, name: str, **overrides: Any) -> OfferSpec:
    return OfferSpec.model_validate(offer_document(name, "ns", tenant, **overrides)["spec"])


async def _revisions(pool: Pool, tenant: str) -> int:
    async with tenant_tx(pool, tenant) as conn:
        return len(await catalog_repo.all_revisions(conn, tenant))


async def test_concurrent_offers_share_revisions_and_all_get_published(
        pool: Pool, tenant_name: str) -> None:
    await catalog_service.apply_tenant(pool, tenant_name, TenantSpec.model_validate(
        tenant_spec()))
    batcher = PublishBatcher()
    names = [f"plan-{i}" for i in range(40)]
    results = await asyncio.gather(*(
        batcher.apply_offer(pool, tenant_name, n, _offer(tenant_name, n)) for n in names))
    assert all(r.valid and r.revision is not None for r in results)
    revisions = await _revisions(pool, tenant_name)
    # all 40 are queued before the publishing worker first runs: one revision, not 40
    assert revisions == 1
    assert max(r.revision or 0 for r in results) == revisions
    await batcher.close()


async def test_an_invalid_offer_in_a_batch_is_refused_alone(pool: Pool, tenant_name: str
                                                            ) -> None:
    await catalog_service.apply_tenant(pool, tenant_name, TenantSpec.model_validate(
        tenant_spec()))
    batcher = PublishBatcher()
    specs = {f"plan-{i}": _offer(tenant_name, f"plan-{i}") for i in range(9)}
    specs["addon"] = _offer(tenant_name, "addon", kind="addon",
                            eligibility={"requires": ["nowhere"]})
    # one addon requires a plan that is only in the same batch: valid together
    specs["boost"] = _offer(tenant_name, "boost", kind="addon",
                            eligibility={"requires": ["plan-3"]})
    results = dict(zip(specs, await asyncio.gather(*(
        batcher.apply_offer(pool, tenant_name, n, s) for n, s in specs.items())), strict=True))
    refused = {n for n, r in results.items() if not r.valid}
    assert refused == {"addon"}
    assert any("nowhere" in e for e in results["addon"].errors)
    async with tenant_tx(pool, tenant_name) as conn:
        latest = await catalog_repo.latest_revision(conn, tenant_name)
    assert latest is not None
    assert set(latest.source.offers) == set(specs) - {"addon"}
    await batcher.close()
