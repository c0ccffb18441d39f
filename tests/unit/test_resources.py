"""Resource schemas: the examples are valid; mistakes name the field path and the rule."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import EXAMPLES, offer_document
from tollgate_core.local.apply import load_documents
from tollgate_core.resources import ResourceError, parse_resource


def _errors(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ResourceError) as caught:
        parse_resource(document, "offer.yaml")
    return caught.value.errors


def test_examples_are_valid() -> None:
    kinds = sorted(r.kind for r in load_documents(EXAMPLES))
    assert kinds == ["Offer", "Offer", "PartnerAgreement", "Tenant"]


def test_unknown_field_is_refused_with_its_path() -> None:
    errors = _errors(offer_document("de", "x", displayNme="typo"))
    assert any(e.startswith("spec.displayNme:") and "Extra inputs" in e for e in errors)


def test_float_amount_is_refused() -> None:
    doc = offer_document("de", "x", prices=[{
        "name": "fee", "priceType": "recurring", "recurring": {"amount": 19.99}}])
    errors = _errors(doc)
    assert any(e.startswith("spec.prices.0.recurring.amount:") for e in errors)


def test_price_shape_must_match_price_type() -> None:
    doc = offer_document("de", "x", prices=[{
        "name": "fee", "priceType": "usage", "recurring": {"amount": "1"}}])
    assert any("set exactly the field named by priceType" in e for e in _errors(doc))


def test_tiers_must_be_contiguous() -> None:
    tiers = [{"from": 0, "to": 100, "unitPrice": "1"}, {"from": 200, "unitPrice": "0.5"}]
    doc = offer_document("de", "x", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes", "tiers": tiers}}])
    assert any("tiers[1]: must be contiguous" in e for e in _errors(doc))


def test_valid_for_start_before_end() -> None:
    doc = offer_document("de", "x", validFor={"start": "2027-01-01T00:00:00Z",
                                              "end": "2026-01-01T00:00:00Z"})
    assert any("validFor.start must be before validFor.end" in e for e in _errors(doc))


def test_wrong_api_version_and_kind() -> None:
    doc = offer_document("de", "x")
    doc["apiVersion"] = "v1"
    assert _errors(doc)[0].startswith("apiVersion: must be bss.tollgate.dev/v1alpha1")
    doc = offer_document("de", "x")
    doc["kind"] = "Ofer"
    assert _errors(doc)[0].startswith("kind: must be one of")


def test_tenant_currency_and_timezone_are_checked() -> None:
    doc = {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant",
           "metadata": {"name": "xx"},
           "spec": {"market": "DE", "currency": "EUX", "timezone": "Europe/Berlinn"}}
    errors = _errors(doc)
    assert any(e.startswith("spec.currency:") and "ISO 4217" in e for e in errors)
    assert any(e.startswith("spec.timezone:") and "IANA" in e for e in errors)
