"""The generated CRDs on a real kube-apiserver: examples pass, every rule refuses, kubectl reads."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.harness.controlplane import ControlPlane
from tollgate_core.resources import API_GROUP, API_VERSION, OfferSpec, ResourceError, parse_resource
from tollgate_core.resources.crd import KINDS, crd

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PLURALS = {kind.kind: kind.plural for kind in KINDS}
FIELD_MANAGER = "tollgate-tests"

Document = dict[str, Any]


def _example(kind: str) -> Document:
    """A fresh copy of the first example of *kind*, renamed so it never clashes."""
    for path in EXAMPLES:
        document: Document = yaml.safe_load(path.read_text())
        if document["kind"] == kind:
            document["metadata"]["name"] = f"{document['metadata']['name']}-invalid"
            return document
    raise AssertionError(f"no example of kind {kind}")


def _create(api: client.CustomObjectsApi, namespace: str, document: Document) -> Any:
    """Create *document* as a dry run (validated and defaulted, never stored)."""
    return api.create_namespaced_custom_object(
        API_GROUP, API_VERSION, namespace, PLURALS[document["kind"]], document,
        dry_run="All", field_validation="Strict",
    )


def _refusal(api: client.CustomObjectsApi, namespace: str, document: Document) -> ApiException:
    with pytest.raises(ApiException) as caught:
        _create(api, namespace, document)
    return caught.value


def _message(error: ApiException) -> str:
    body = json.loads(error.body or "{}")
    return str(body.get("message", error.body))


@pytest.fixture(scope="module")
def applied(custom_objects: client.CustomObjectsApi, namespace: str) -> list[Document]:
    """The examples, server-side applied as `kubectl apply --server-side` would."""
    results: list[Document] = []
    for path in EXAMPLES:
        document: Document = yaml.safe_load(path.read_text())
        where = (API_GROUP, API_VERSION, namespace, PLURALS[document["kind"]],
                 document["metadata"]["name"])
        custom_objects.patch_namespaced_custom_object(
            *where, document, field_manager=FIELD_MANAGER, force=True,
            field_validation="Strict", _content_type="application/apply-patch+yaml",
        )
        # Read back: the client decodes only a 200 answer to a patch, and an apply that
        # creates answers 201.
        results.append(cast(Document, custom_objects.get_namespaced_custom_object(*where)))
    return results


def _contains(outer: Any, inner: Any) -> bool:
    """*inner* is *outer* with fields left out (the server adds defaults)."""
    if isinstance(inner, dict):
        return isinstance(outer, dict) and all(
            key in outer and _contains(outer[key], value) for key, value in inner.items())
    if isinstance(inner, list):
        return isinstance(outer, list) and len(outer) == len(inner) and all(
            _contains(o, i) for o, i in zip(outer, inner, strict=True))
    return bool(outer == inner)


def test_examples_are_accepted_by_server_side_apply(applied: list[Document]) -> None:
    stored = [(r["kind"], r["metadata"]["name"]) for r in applied]
    assert stored == [("Tenant", "de"), ("Offer", "mobile-m"), ("Offer", "data-boost"),
                      ("PartnerAgreement", "streamflix")]
    for path, result in zip(EXAMPLES, applied, strict=True):
        assert _contains(result["spec"], yaml.safe_load(path.read_text())["spec"]), path.name


def test_examples_are_accepted_by_create_with_defaults_filled(
    custom_objects: client.CustomObjectsApi, namespace: str
) -> None:
    created = _create(custom_objects, namespace, _example("Offer"))
    price = created["spec"]["prices"][0]
    assert (price["recurring"]["period"], price["recurring"]["proration"]) == ("month", "daily")
    for kind in ("Tenant", "PartnerAgreement"):
        assert _create(custom_objects, namespace, _example(kind))["kind"] == kind


def _usage_tiers(*tiers: Document) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        document["spec"]["prices"] = [{"name": "data", "priceType": "usage", "usage": {
            "service": "data", "unit": "bytes", "tiers": list(tiers)}}]
    return mutate


def _api_tiers(*tiers: Document, price_per_call: str | None = None
               ) -> Callable[[Document], None]:
    def mutate(document: Document) -> None:
        api: Document = {"name": "qod", "tiers": list(tiers)}
        if price_per_call is not None:
            api["pricePerCall"] = price_per_call
        document["spec"]["networkApis"] = [api]
    return mutate


def _set(path: str, value: Any) -> Callable[[Document], None]:
    """Set the dotted *path* (list indexes allowed) of a document to *value*."""
    def mutate(document: Document) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[int(last) if last.isdigit() else last] = value
    return mutate


# (kind, change to the example, the CEL rule's message the API server must answer with)
CEL_CASES: list[tuple[str, Callable[[Document], None], str]] = [
    ("Offer", _usage_tiers({"from": 5, "unitPrice": "1"}),
     "tiers: the first tier must start at 0"),
    ("Offer", _usage_tiers({"from": 0, "to": 100, "unitPrice": "1"},
                           {"from": 100, "to": 50, "unitPrice": "1"},
                           {"from": 50, "unitPrice": "1"}),
     "tiers: every tier but the last needs `to` greater than `from`"),
    ("Offer", _usage_tiers({"from": 0, "to": 100, "unitPrice": "1"},
                           {"from": 200, "unitPrice": "0.5"}),
     "tiers: must be contiguous (each `from` equals the previous `to`)"),
    # A tier repeated: a rule that finds a tier's index with indexOf sees the first copy.
    ("Offer", _usage_tiers({"from": 0, "to": 10, "unitPrice": "1"},
                           {"from": 0, "to": 10, "unitPrice": "1"},
                           {"from": 10, "unitPrice": "0.5"}),
     "tiers: must be contiguous (each `from` equals the previous `to`)"),
    ("Offer", _set("spec.prices", [{"name": "fee", "priceType": "usage",
                                    "recurring": {"amount": "1"}}]),
     "prices: set exactly the field named by priceType (recurring, oneTime or usage)"),
    ("Offer", _set("spec.validFor", {"start": "2027-01-01T00:00:00Z",
                                     "end": "2026-01-01T00:00:00Z"}),
     "validFor.start must be before validFor.end"),
    ("PartnerAgreement", _set("spec.validFor", {"start": "2027-01-01T00:00:00Z",
                                                "end": "2027-01-01T00:00:00Z"}),
     "validFor.start must be before validFor.end"),
    ("Offer", _set("spec.discounts", [{"name": "promo", "percent": "10", "fixed": "1"}]),
     "discounts: set exactly one of percent or fixed"),
    ("Offer", _set("spec.thresholds", [{"allowance": "data-5gb"}]),
     "thresholds: set allowance+percent or balanceBelow"),
    ("Offer", _set("spec.kind", "bundle"), "bundle: a bundle needs components"),
    ("Offer", _set("spec.prices", [
        {"name": name, "priceType": "usage", "usage": {
            "service": "data", "unit": "bytes", "tiers": [{"from": 0, "unitPrice": "1"}]}}
        for name in ("data-day", "data-night")]),
     "prices: at most one usage price per service"),
    ("Offer", _set("spec.thresholds", [{"allowance": "data-50gb", "percent": 80}]),
     "thresholds: a threshold's allowance must be one of `allowances`"),
    ("Offer", _set("spec.prices.1.usage.bands", [
        {"name": "night", "start": "22:00", "end": "06:00", "multiplierPercent": "50"}]),
     "bands: start must be before end (HH:MM, same day)"),
    ("Tenant", _set("spec.database", {"mode": "external"}),
     "database.secretRef is required when database.mode is external"),
    ("PartnerAgreement", _set("spec.revenueShare", {"model": "percentage"}),
     "revenueShare.percent is required for model percentage"),
    ("PartnerAgreement", _set("spec.revenueShare", {"model": "perUnitFee"}),
     "revenueShare.perUnitFee is required for model perUnitFee"),
    ("PartnerAgreement", _set("spec.revenueShare", {"model": "tiered"}),
     "revenueShare.tiers is required for model tiered"),
    ("Tenant", _set("spec.currency", "EUX"), "must be an ISO 4217 currency code (e.g. EUR)"),
    ("Tenant", _set("spec.api.auth", {"issuer": "https://login.example.com"}),
     "exactly one of api.auth.jwks and api.auth.jwksUri is required"),
    ("Tenant", _set("spec.api.auth", {"issuer": "https://login.example.com",
                                      "jwks": '{"keys": [{"kty": "EC"}]}',
                                      "jwksUri": "https://login.example.com/jwks"}),
     "exactly one of api.auth.jwks and api.auth.jwksUri is required"),
    ("Tenant", _set("spec.legacy", {"mode": "reconcile"}),
     "legacy.extractsClaim is required when legacy.mode is mirror or reconcile"),
    ("Tenant", _set("spec.legacy", {"mode": "mirror", "extractsClaim": "legacy-files",
                                    "schedule": "15 4 * *"}),
     "legacy.schedule must be a cron expression: five fields (minute hour day-of-month month "
     "day-of-week, e.g. '15 4 * * *') or one of @yearly, @annually, @monthly, @weekly, "
     "@daily, @midnight, @hourly"),
    ("PartnerAgreement", _set("spec.partner.settlementCurrency", "XYZ"),
     "must be an ISO 4217 currency code (e.g. EUR)"),
    ("PartnerAgreement", _api_tiers({"from": 0, "pricePerCall": "0.001"},
                                    price_per_call="0.002"),
     "networkApis: set pricePerCall or tiers, not both"),
    ("PartnerAgreement", _api_tiers({"from": 1, "pricePerCall": "0.001"}),
     "networkApis.tiers: the first tier must start at call 0 (the month's first call)"),
    ("PartnerAgreement", _api_tiers({"from": 0, "to": 100, "pricePerCall": "0.002"},
                                    {"from": 100, "to": 50, "pricePerCall": "0.001"},
                                    {"from": 50, "pricePerCall": "0.001"}),
     "networkApis.tiers: every tier but the last needs `to` greater than `from`"),
    ("PartnerAgreement", _api_tiers({"from": 0, "to": 100, "pricePerCall": "0.002"},
                                    {"from": 200, "pricePerCall": "0.001"}),
     "networkApis.tiers: must be ascending and contiguous (each `from` equals the previous "
     "`to`)"),
    ("PartnerAgreement", _api_tiers({"from": 0, "to": 100, "pricePerCall": "0.002"}),
     "networkApis.tiers: the last tier must be open-ended (no `to`); bound the calls with "
     "monthlyQuota"),
]


@pytest.mark.parametrize(("kind", "mutate", "message"), CEL_CASES,
                         ids=[f"{k}: {m[:40]}" for k, _, m in CEL_CASES])
def test_each_cel_rule_is_enforced_by_the_api_server(
    custom_objects: client.CustomObjectsApi, namespace: str,
    kind: str, mutate: Callable[[Document], None], message: str,
) -> None:
    document = _example(kind)
    mutate(document)
    error = _refusal(custom_objects, namespace, document)
    assert error.status == 422, error.body
    text = _message(error)
    assert message in text, text
    assert "no such key" not in text, text  # the rule ran to its verdict, not into an error


@pytest.mark.parametrize(("kind", "mutate", "message"), CEL_CASES,
                         ids=[f"{k}: {m[:40]}" for k, _, m in CEL_CASES])
def test_the_model_refuses_each_case_with_the_same_message(
    kind: str, mutate: Callable[[Document], None], message: str,
) -> None:
    document = _example(kind)
    mutate(document)
    with pytest.raises(ResourceError) as caught:
        parse_resource(document, kind)
    assert any(message in error for error in caught.value.errors), caught.value.errors


def test_every_cel_rule_has_a_case_here() -> None:
    def messages(node: Any) -> set[str]:
        if isinstance(node, dict):
            own = {v["message"] for v in node.get("x-kubernetes-validations", [])}
            return own.union(*(messages(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(messages(v) for v in node))
        return set()

    rules = set().union(*(messages(crd(kind)) for kind in KINDS))
    covered = {m for _, _, m in CEL_CASES}
    assert rules <= covered, f"CEL rules without an API server test: {rules - covered}"


def _twice(item: Document) -> list[Document]:
    return [item, dict(item)]


# (kind, list-map path, a list whose two items share their key)
DUPLICATE_CASES: list[tuple[str, str, list[Document]]] = [
    ("Offer", "spec.prices", _twice(
        {"name": "fee", "priceType": "recurring", "recurring": {"amount": "1"}})),
    ("Offer", "spec.allowances", _twice(
        {"name": "data-5gb", "service": "data", "quantity": 1, "unit": "bytes"})),
    ("Offer", "spec.discounts", _twice({"name": "promo", "percent": "10"})),
    ("Tenant", "spec.taxes", _twice({"category": "standard", "rate": "19"})),
    ("PartnerAgreement", "spec.networkApis", _twice({"name": "qod"})),
    # prices[1] of the example offer is its usage price
    ("Offer", "spec.prices.1.usage.bands", _twice(
        {"name": "night", "start": "00:00", "end": "06:00", "multiplierPercent": "50"})),
    ("Offer", "spec.prices.1.usage.zones", _twice({"name": "eu", "multiplierPercent": "200"})),
    ("Offer", "spec.dynamicPricing.congestion", _twice(
        {"level": "high", "multiplierPercent": "150"})),
    ("Offer", "spec.dynamicPricing.loyalty", _twice(
        {"tier": "gold", "multiplierPercent": "90"})),
]


def _api_path(path: str) -> str:
    """spec.prices.1.usage.bands → spec.prices[1].usage.bands (the API server's spelling)."""
    return re.sub(r"\.(\d+)", r"[\1]", path)


def _schema_path(path: str) -> str:
    """spec.prices.1.usage.bands → spec.prices[].usage.bands (any item of the list)."""
    return re.sub(r"\.\d+", "[]", path)


@pytest.mark.parametrize(("kind", "path", "items"), DUPLICATE_CASES,
                         ids=[p for _, p, _ in DUPLICATE_CASES])
def test_lists_keyed_by_name_refuse_a_duplicate_key(
    custom_objects: client.CustomObjectsApi, namespace: str,
    kind: str, path: str, items: list[Document],
) -> None:
    document = _example(kind)
    _set(path, items)(document)
    error = _refusal(custom_objects, namespace, document)
    assert error.status == 422, error.body
    assert f"{_api_path(path)}[1]: Duplicate value" in _message(error), _message(error)
    with pytest.raises(ResourceError) as caught:  # the model refuses it as well
        parse_resource(document, kind)
    field = path.removeprefix("spec.")
    assert any(e.startswith(f"spec.{field}:") and "appears twice" in e
               for e in caught.value.errors), caught.value.errors


def test_every_list_map_has_a_duplicate_case_here() -> None:
    def list_maps(node: Any, path: str) -> set[str]:
        if not isinstance(node, dict):
            return set()
        own = {path} if node.get("x-kubernetes-list-type") == "map" else set()
        children = [(f"{path}.{name}", child)
                    for name, child in node.get("properties", {}).items()]
        if isinstance(node.get("items"), dict):
            children.append((f"{path}[]", node["items"]))
        return own.union(*(list_maps(child, p) for p, child in children))

    maps = set()
    for kind in KINDS:
        schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        maps |= {(kind.kind, p) for p in list_maps(schema["properties"]["spec"], "spec")}
    assert maps == {(kind, _schema_path(path)) for kind, path, _ in DUPLICATE_CASES}


@pytest.mark.parametrize(("kind", "path", "value", "expected"), [
    ("Offer", "spec.thresholds.0.percent", 101, "spec.thresholds[0].percent"),
    ("Tenant", "spec.taxes.0.rate", "101", "spec.taxes[0].rate"),
    ("PartnerAgreement", "spec.revenueShare.percent", "130", "spec.revenueShare.percent"),
])
def test_percent_above_100_is_refused(
    custom_objects: client.CustomObjectsApi, namespace: str,
    kind: str, path: str, value: Any, expected: str,
) -> None:
    document = _example(kind)
    _set(path, value)(document)
    error = _refusal(custom_objects, namespace, document)
    assert error.status == 422, error.body
    assert f"{expected}: Invalid value" in _message(error)


def test_unknown_field_is_refused_with_strict_field_validation(
    custom_objects: client.CustomObjectsApi, namespace: str
) -> None:
    document = _example("Offer")
    document["spec"]["displayNme"] = "typo"
    error = _refusal(custom_objects, namespace, document)
    assert error.status == 400, error.body  # fieldValidation=Strict answers BadRequest
    assert 'unknown field "spec.displayNme"' in _message(error)


def test_status_takes_conditions_and_kopf_bookkeeping(
    applied: list[Document], custom_objects: client.CustomObjectsApi,
    control_plane: ControlPlane, namespace: str,
) -> None:
    status = {
        "phase": "Ready", "observedGeneration": 1, "catalogRevision": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllReady",
                        "message": "every workload is ready",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
        "kopf": {"progress": {"reconcile": {"started": "2026-01-01T00:00:00Z", "retries": 0}}},
    }
    patched: Any = custom_objects.patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, "tenants", "de", {"status": status},
        field_validation="Strict", _content_type="application/merge-patch+json",
    )
    assert patched["status"]["kopf"] == status["kopf"]
    rows = control_plane.kubectl("get", "tenants", "-n", namespace).stdout.split()
    assert rows[:7] == ["NAME", "MARKET", "CURRENCY", "PHASE", "READY", "REVISION", "AGE"]
    assert rows[7:13] == ["de", "DE", "EUR", "Ready", "True", "3"]


def test_status_refuses_undeclared_fields(
    applied: list[Document], custom_objects: client.CustomObjectsApi, namespace: str
) -> None:
    with pytest.raises(ApiException) as caught:
        custom_objects.patch_namespaced_custom_object_status(
            API_GROUP, API_VERSION, namespace, "offers", "mobile-m",
            {"status": {"published": True}}, field_validation="Strict",
            _content_type="application/merge-patch+json",
        )
    assert 'unknown field "status.published"' in _message(caught.value)


def test_kubectl_get_offers_prints_tenant_kind_and_lifecycle(
    applied: list[Document], control_plane: ControlPlane, namespace: str
) -> None:
    lines = control_plane.kubectl("get", "offers", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "TENANT", "KIND", "LIFECYCLE", "REVISION", "READY", "AGE"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:]}
    assert rows == {"mobile-m": ["de", "plan", "active"], "data-boost": ["de", "addon", "active"]}


def test_kubectl_explain_shows_the_field_descriptions(control_plane: ControlPlane) -> None:
    out = " ".join(control_plane.kubectl("explain", "offer.spec.prices").stdout.split())
    description = OfferSpec.model_fields["prices"].description
    assert description is not None
    assert description in out
    assert "Name of the price, unique within the offer." in out


def test_kubectl_get_tollgate_lists_every_kind(
    applied: list[Document], control_plane: ControlPlane
) -> None:
    out = control_plane.kubectl("get", "tollgate", "-A").stdout
    for name in ("tenant.bss.tollgate.dev/de", "offer.bss.tollgate.dev/mobile-m",
                 "offer.bss.tollgate.dev/data-boost",
                 "partneragreement.bss.tollgate.dev/streamflix"):
        assert name in out


def test_short_names_resolve(applied: list[Document], control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "tn,of,pa", "-A", "-o", "name").stdout.split()
    assert sorted(out) == sorted([
        "tenant.bss.tollgate.dev/de", "offer.bss.tollgate.dev/mobile-m",
        "offer.bss.tollgate.dev/data-boost", "partneragreement.bss.tollgate.dev/streamflix"])
