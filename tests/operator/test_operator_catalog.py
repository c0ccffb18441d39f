"""Offers and PartnerAgreements through the operator: validate, publish, retire, credentials."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Servers
from tests.harness.controlplane import ControlPlane
from tests.operator.operator_fixtures import (
    OperatorThread,
    condition,
    create,
    database_namespace,
    events,
    eventually,
    get,
    get_resource,
    offer_document,
    operator_settings,
    partner_document,
    patch,
    tenant_document,
)
from tollgate_core.domain.care import api_key_digest
from tollgate_core.resources.offer import LifecycleStatus
from tollgate_core.store import catalog_repo, partner_keys
from tollgate_core.store.catalog_repo import StoredRevision
from tollgate_core.store.db import Pool, tenant_tx

PREFIX = "tgcat"


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorThread]:
    settings = operator_settings(control_plane.kubeconfig, (f"{PREFIX}-*",))
    with OperatorThread(settings) as running:
        yield running


@pytest.fixture
def ns(control_plane: ControlPlane, servers: Servers) -> str:
    return database_namespace(control_plane, PREFIX, servers.app_dsn, servers.owner_dsn)


@pytest.fixture
async def tenant(operator: OperatorThread, control_plane: ControlPlane, ns: str,
                 tenant_name: str) -> str:
    """A Tenant whose catalog is synced (its row exists in the catalog store)."""
    create(control_plane, tenant_document(tenant_name, ns))
    await eventually(lambda: condition(get_resource(control_plane, "Tenant", ns, tenant_name),
                                       "CatalogSynced").get("status") == "True",
                     "tenant catalog synced", 60)
    return tenant_name


async def latest(pool: Pool, tenant: str) -> StoredRevision | None:
    async with tenant_tx(pool, tenant) as conn:
        return await catalog_repo.latest_revision(conn, tenant)


def published_revision(cp: ControlPlane, ns: str, name: str, generation: int) -> int | None:
    body = get_resource(cp, "Offer", ns, name)
    published = condition(body, "Published")
    if published.get("status") == "True" and published.get("observedGeneration") == generation:
        return int((body or {})["status"]["publishedRevision"])
    return None


async def test_a_valid_offer_is_published_and_a_price_change_is_the_next_revision(
        control_plane: ControlPlane, ns: str, tenant: str, pool: Pool) -> None:
    cp = control_plane
    started = time.monotonic()
    create(cp, offer_document("mobile-s", ns, tenant, amount="9.99"))
    first = await eventually(lambda: published_revision(cp, ns, "mobile-s", 1), "published")
    print(f"\n[timing] Offer -> Published in {time.monotonic() - started:.2f}s")
    stored = await latest(pool, tenant)
    assert stored is not None and stored.revision == first
    body = get_resource(cp, "Offer", ns, "mobile-s")
    assert body is not None
    assert condition(body, "Valid")["reason"] == "Validated"
    assert body["status"]["lastPublishedTime"].endswith("Z")
    assert body["status"]["validationErrors"] == []
    assert ("Normal", "Published", f"catalog revision {first}") in events(cp, ns, "mobile-s")

    patch(cp, "Offer", ns, "mobile-s", {"spec": {"prices": [
        {"name": "monthly-fee", "priceType": "recurring",
         "recurring": {"amount": "11.99", "period": "month"}}]}})
    second = await eventually(lambda: published_revision(cp, ns, "mobile-s", 2), "republished")
    assert second == first + 1
    stored = await latest(pool, tenant)
    assert stored is not None and stored.revision == second
    fee = stored.source.offers["mobile-s"].prices[0].recurring
    assert fee is not None and fee.amount == "11.99"


async def test_an_offer_requiring_a_missing_offer_is_invalid_and_leaves_the_catalog_alone(
        control_plane: ControlPlane, ns: str, tenant: str, pool: Pool) -> None:
    cp = control_plane
    create(cp, offer_document("mobile-m", ns, tenant))
    base = await eventually(lambda: published_revision(cp, ns, "mobile-m", 1), "base published")

    create(cp, offer_document("boost", ns, tenant, kind="addon",
                              eligibility={"requires": ["mobile-xl"]}))

    def invalid() -> dict[str, object] | None:
        valid = condition(get_resource(cp, "Offer", ns, "boost"), "Valid")
        return valid if valid.get("status") == "False" else None

    valid = await eventually(invalid, "Valid=False")
    assert valid["reason"] == "InvalidReference"
    assert "mobile-xl" in str(valid["message"])
    body = get_resource(cp, "Offer", ns, "boost")
    assert body is not None
    assert body["status"]["validationErrors"] and "mobile-xl" in body["status"][
        "validationErrors"][0]
    assert "publishedRevision" not in body["status"]
    published = condition(body, "Published")
    assert (published["status"], published["reason"]) == ("False", "NotPublished")
    stored = await latest(pool, tenant)
    assert stored is not None and stored.revision == base and "boost" not in stored.source.offers
    assert "Warning" in [t for t, r, _ in events(cp, ns, "boost") if r == "InvalidReference"]

    # The reference is applied later: the offer is validated again and published.
    create(cp, offer_document("mobile-xl", ns, tenant))
    revision = await eventually(lambda: published_revision(cp, ns, "boost", 1),
                                "boost published after mobile-xl", 30)
    assert revision > base


async def test_deleting_an_offer_retires_it_in_the_next_revision(
        control_plane: ControlPlane, ns: str, tenant: str, pool: Pool) -> None:
    cp = control_plane
    create(cp, offer_document("legacy-plan", ns, tenant))
    published = await eventually(lambda: published_revision(cp, ns, "legacy-plan", 1),
                                 "published")
    body = get_resource(cp, "Offer", ns, "legacy-plan")
    assert body is not None and "bss.tollgate.dev/finalizer" in body["metadata"]["finalizers"]

    cp.api("DELETE", f"/apis/bss.tollgate.dev/v1alpha1/namespaces/{ns}/offers/legacy-plan")
    await eventually(lambda: get_resource(cp, "Offer", ns, "legacy-plan") is None,
                     "Offer gone (finalizer released)")
    stored = await latest(pool, tenant)
    assert stored is not None and stored.revision == published + 1
    assert stored.source.offers["legacy-plan"].lifecycle_status is LifecycleStatus.RETIRED
    assert ("Normal", "Retired", f"retired in catalog revision {published + 1}") in events(
        cp, ns, "legacy-plan")


async def test_an_offer_applied_before_its_tenant_waits_then_publishes(
        operator: OperatorThread, control_plane: ControlPlane, ns: str, tenant_name: str,
        pool: Pool) -> None:
    cp = control_plane
    create(cp, offer_document("early", ns, tenant_name))
    waiting = await eventually(
        lambda: condition(get_resource(cp, "Offer", ns, "early"), "Published") or None,
        "Published condition")
    assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForTenant")
    assert condition(get_resource(cp, "Offer", ns, "early"), "Valid")["status"] == "Unknown"

    create(cp, tenant_document(tenant_name, ns))
    revision = await eventually(lambda: published_revision(cp, ns, "early", 1),
                                "published once the Tenant is there", 60)
    stored = await latest(pool, tenant_name)
    assert stored is not None and stored.revision == revision


async def test_a_partner_agreement_is_published_with_an_api_key_that_is_kept(
        control_plane: ControlPlane, ns: str, tenant: str, pool: Pool) -> None:
    cp = control_plane
    create(cp, offer_document("video-pass", ns, tenant, kind="addon"))
    await eventually(lambda: published_revision(cp, ns, "video-pass", 1), "offer published")
    agreement = create(cp, partner_document("streamflix", ns, tenant, ["video-pass"]))

    def ready(generation: int) -> dict[str, object] | None:
        body = get_resource(cp, "PartnerAgreement", ns, "streamflix")
        ok = condition(body, "Ready")
        good = ok.get("status") == "True" and ok.get("observedGeneration") == generation
        return dict(body["status"]) if body is not None and good else None

    status = await eventually(lambda: ready(1), "agreement Ready")
    assert status["credentialsSecretRef"] == {"name": "streamflix-api-key"}
    stored = await latest(pool, tenant)
    assert stored is not None and status["activeRevision"] == stored.revision
    assert "streamflix" in stored.source.partners
    secret = get(cp, f"/api/v1/namespaces/{ns}/secrets/streamflix-api-key")
    assert secret is not None
    key = base64.b64decode(secret["data"]["apiKey"]).decode()
    assert len(key) >= 43  # 256 bits, URL-safe base64
    # The API accepts it: the tenant's database holds its digest (and only that).
    assert await partner_keys.authenticate(pool, api_key_digest(key)) == partner_keys.KeyOwner(
        tenant, "streamflix")
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"]) == ("PartnerAgreement", agreement["metadata"]["uid"])

    patch(cp, "PartnerAgreement", ns, "streamflix",
          {"spec": {"revenueShare": {"model": "percentage", "percent": "35"}}})
    status = await eventually(lambda: ready(2), "agreement Ready at generation 2")
    assert status["activeRevision"] == int(str(stored.revision)) + 1
    again = get(cp, f"/api/v1/namespaces/{ns}/secrets/streamflix-api-key")
    assert again is not None and again["data"]["apiKey"] == secret["data"]["apiKey"]
