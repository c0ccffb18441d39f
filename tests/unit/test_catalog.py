"""Catalog compilation: references must resolve; identical content is the same revision."""

from __future__ import annotations

import pytest

from tests.factories import example_resources
from tollgate_core.domain.catalog import CatalogError, CatalogSource, compile_catalog
from tollgate_core.resources import Offer, PartnerAgreement, Tenant
from tollgate_core.resources.common import Ref
from tollgate_core.resources.offer import OfferKind, Service


def example_source() -> CatalogSource:
    resources = example_resources("de")
    tenant = next(r for r in resources if isinstance(r, Tenant))
    return CatalogSource(
        tenant=tenant.spec,
        offers={r.metadata.name: r.spec for r in resources if isinstance(r, Offer)},
        partners={r.metadata.name: r.spec for r in resources if isinstance(r, PartnerAgreement)},
    )


def test_example_catalog_compiles() -> None:
    catalog = compile_catalog(example_source())
    plan = catalog.offers["mobile-m"]
    assert plan.recurring[0].amount_micros == 19_990_000
    assert plan.allowances[0].quantity == 5 * 1024**3


def test_digest_is_stable_and_content_sensitive() -> None:
    source = example_source()
    assert source.digest() == example_source().digest()
    changed = source.offers["mobile-m"].model_copy(update={"display_name": "Mobile M+"})
    other = CatalogSource(source.tenant, {**source.offers, "mobile-m": changed}, source.partners)
    assert other.digest() != source.digest()


def test_dangling_references_are_reported_with_their_path() -> None:
    source = example_source()
    addon = source.offers["data-boost"]
    broken = addon.model_copy(update={"eligibility": addon.eligibility.model_copy(
        update={"requires": ["mobile-xl"]})})
    with pytest.raises(CatalogError) as caught:
        compile_catalog(CatalogSource(source.tenant, {**source.offers, "data-boost": broken},
                                      source.partners))
    assert caught.value.errors == [
        "Offer data-boost: spec.eligibility.requires[0]: offer 'mobile-xl' does not exist"]


def test_tax_category_must_exist_in_the_tenant() -> None:
    source = example_source()
    plan = source.offers["mobile-m"].model_copy(update={"tax_category": "reduced"})
    with pytest.raises(CatalogError) as caught:
        compile_catalog(CatalogSource(source.tenant, {**source.offers, "mobile-m": plan},
                                      source.partners))
    assert "spec.taxCategory: 'reduced' is not a tax category" in caught.value.errors[0]


def test_a_bundle_carries_its_components_allowances_and_prices() -> None:
    source = example_source()
    bundle = source.offers["mobile-m"].model_copy(update={
        "kind": OfferKind.BUNDLE, "display_name": "Mobile M + Boost", "prices": [],
        "allowances": [], "thresholds": [],
        "bundle": [Ref(name="mobile-m"), Ref(name="data-boost")]})
    catalog = compile_catalog(CatalogSource(source.tenant, {**source.offers, "combo": bundle},
                                            source.partners))
    combo = catalog.offers["combo"]
    # 5 GiB from the plan and 2 GiB from the add-on, named after their component
    assert [(a.name, a.quantity) for a in combo.allowances] == [
        ("mobile-m.data-5gb", 5 * 1024**3), ("data-boost.boost-2gb", 2 * 1024**3)]
    assert combo.usage[Service.DATA].price_name == "data-payg"
    assert [t.allowance for t in combo.thresholds] == ["mobile-m.data-5gb"] * 2
