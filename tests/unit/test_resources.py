"""Resource schemas: the examples are valid; mistakes name the field path and the rule."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import EXAMPLES, offer_document
from tollgate_core.local.apply import load_documents
from tollgate_core.resources import (
    ConditionStatus,
    OfferStatus,
    PartnerAgreement,
    ResourceError,
    Tenant,
    TenantPhase,
    TenantSpec,
    TenantStatus,
    parse_resource,
)
from tollgate_core.resources.crd import KINDS, crd
from tollgate_core.resources.tenant import CRON_MESSAGE, CRON_REGEX

PARTNER: dict[str, Any] = {
    "apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "PartnerAgreement",
    "metadata": {"name": "p"},
    "spec": {"tenantRef": {"name": "de"}, "role": "apiConsumer",
             "partner": {"id": "p", "displayName": "P", "contactEmail": "p@example.com",
                         "settlementCurrency": "EUR"},
             "revenueShare": {"model": "percentage", "percent": "10"}},
}


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
    assert any("must be contiguous" in e and e.endswith("at tiers[1]") for e in _errors(doc))


def test_a_repeated_tier_is_not_contiguous() -> None:
    tiers = [{"from": 0, "to": 10, "unitPrice": "1"}, {"from": 0, "to": 10, "unitPrice": "1"},
             {"from": 10, "unitPrice": "0.5"}]
    doc = offer_document("de", "x", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes", "tiers": tiers}}])
    assert any("must be contiguous" in e and e.endswith("at tiers[1]") for e in _errors(doc))


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


def test_partner_settlement_currency_is_an_iso_4217_code() -> None:
    assert isinstance(parse_resource(PARTNER), PartnerAgreement)
    doc = {**PARTNER, "spec": {**PARTNER["spec"],
                               "partner": {**PARTNER["spec"]["partner"],
                                           "settlementCurrency": "XYZ"}}}
    errors = _errors(doc)
    assert any(e.startswith("spec.partner.settlementCurrency:")
               and "must be an ISO 4217 currency code (e.g. EUR), got 'XYZ'" in e
               for e in errors), errors


@pytest.mark.parametrize(("field", "item"), [
    ("prices", {"name": "fee", "priceType": "recurring", "recurring": {"amount": "1"}}),
    ("allowances", {"name": "d", "service": "data", "quantity": 1, "unit": "bytes"}),
    ("discounts", {"name": "promo", "percent": "10"}),
])
def test_offer_lists_refuse_a_repeated_name(field: str, item: dict[str, Any]) -> None:
    errors = _errors(offer_document("de", "x", **{field: [item, dict(item)]}))
    assert any(e.startswith(f"spec.{field}:") and "name=" in e and "appears twice" in e
               for e in errors), errors


def test_partner_network_apis_refuse_a_repeated_name() -> None:
    doc = {**PARTNER, "spec": {**PARTNER["spec"], "networkApis": [{"name": "qod"}] * 2}}
    assert any(e.startswith("spec.networkApis:") and "name='qod' appears twice" in e
               for e in _errors(doc))


def test_tenant_taxes_refuse_a_repeated_category() -> None:
    doc = {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant",
           "metadata": {"name": "xx"},
           "spec": {"market": "DE", "currency": "EUR",
                    "taxes": [{"category": "standard", "rate": "19"}] * 2}}
    assert any(e.startswith("spec.taxes:") and "category='standard' appears twice" in e
               for e in _errors(doc))


def _tenant(legacy: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "xx"},
            "spec": {"market": "DE", "currency": "EUR", "legacy": legacy}}


def test_legacy_mirror_or_reconcile_needs_a_claim_and_a_valid_schedule() -> None:
    tenant = parse_resource(_tenant({"mode": "reconcile", "extractsClaim": "legacy-files",
                                     "tolerancePpm": 50}))
    assert isinstance(tenant, Tenant)
    legacy = tenant.spec.legacy
    assert (legacy.schedule, legacy.amount_unit, legacy.tolerance_micros,
            legacy.tolerance_ppm) == ("15 4 * * *", "micro", 0, 50)
    assert parse_resource(_tenant({})) is not None  # mode none needs nothing
    # tenants stored in the database before the schedule had a default
    stored = TenantSpec.model_validate({"market": "DE", "currency": "EUR",
                                        "legacy": {"mode": "none", "schedule": None}})
    assert stored.legacy.schedule == "15 4 * * *"
    errors = _errors(_tenant({"mode": "mirror"}))
    assert any(e.startswith("spec.legacy:") and "legacy.extractsClaim is required when "
               "legacy.mode is mirror or reconcile" in e for e in errors), errors
    for schedule, problem in [("15 4 * *", "five fields"), ("60 4 * * *", "five fields"),
                              ("@DAILY", "five fields"), ("TZ=UTC 0 0 * * *", "five fields"),
                              ("5-1 * * * *", "range '5-1' runs backwards"),
                              ("*/0 * * * *", "steps by 0")]:
        errors = _errors(_tenant({"mode": "mirror", "extractsClaim": "x",
                                  "schedule": schedule}))
        assert any(e.startswith("spec.legacy.schedule:") and problem in e for e in errors), (
            schedule, errors)
    for schedule in ("*/15 * * * *", "@hourly", "0 3 1-7 * MON", "30 1 ? JAN-jun 1,3,5"):
        assert parse_resource(_tenant({"mode": "mirror", "extractsClaim": "x",
                                       "schedule": schedule})) is not None
    errors = _errors(_tenant({"mode": "mirror", "extractsClaim": "Not_A_Claim"}))
    assert any(e.startswith("spec.legacy.extractsClaim:") for e in errors), errors
    errors = _errors(_tenant({"mode": "reconcile", "extractsClaim": "x", "tolerancePpm": -1}))
    assert any(e.startswith("spec.legacy.tolerancePpm:") for e in errors), errors


def test_the_crd_runs_the_legacy_rules_with_the_same_messages() -> None:
    schema = crd(KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    legacy = schema["properties"]["spec"]["properties"]["legacy"]
    assert legacy["x-kubernetes-validations"] == [{
        "rule": "self.mode == 'none' || has(self.extractsClaim)",
        "message": "legacy.extractsClaim is required when legacy.mode is mirror or reconcile"}]
    (rule,) = legacy["properties"]["schedule"]["x-kubernetes-validations"]
    assert rule["rule"] == f"self.matches('{CRON_REGEX}')"
    assert rule["message"] == CRON_MESSAGE
    assert "\\" not in rule["rule"] and "'" not in CRON_REGEX  # a plain CEL string literal


def test_one_usage_price_per_service_and_thresholds_name_an_allowance() -> None:
    usage = {"service": "data", "unit": "bytes", "tiers": [{"from": 0, "unitPrice": "1"}]}
    doc = offer_document("de", "x", prices=[
        {"name": n, "priceType": "usage", "usage": usage} for n in ("day", "night")])
    assert any("prices: at most one usage price per service" in e for e in _errors(doc))
    doc = offer_document("de", "x", thresholds=[{"allowance": "nope", "percent": 80}])
    assert any("thresholds: a threshold's allowance must be one of `allowances`" in e
               and "'nope'" in e for e in _errors(doc))


def test_status_as_the_api_server_returns_it_parses_and_round_trips() -> None:
    returned: dict[str, Any] = {
        "phase": "Ready", "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}],
        "kopf": {"progress": {}},  # Kopf's bookkeeping: not part of the model
    }
    status = TenantStatus.model_validate(returned)
    assert status.phase is TenantPhase.READY
    assert status.conditions[0].status is ConditionStatus.TRUE
    written = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert written == {**{k: v for k, v in returned.items() if k != "kopf"},
                       "conditions": [{**returned["conditions"][0], "message": ""}]}


def test_status_conditions_are_keyed_by_type() -> None:
    condition = {"type": "Valid", "status": "True", "reason": "Validated",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    with pytest.raises(ValueError, match="type='Valid' appears twice"):
        OfferStatus.model_validate({"conditions": [condition, condition]})
