"""Conditions and status decisions, pure: transitions, generations, verdict → status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.operator.operator_fixtures import offer_document, tenant_workload
from tollgate_core.resources import OfferSpec
from tollgate_operator.catalog_logic import (
    Verdict,
    already_reconciled,
    offer_outcome,
    parse_spec,
    partner_outcome,
)
from tollgate_operator.conditions import (
    Condition,
    ConditionType,
    Reason,
    Status,
    merge_conditions,
    status_changes,
)
from tollgate_operator.manifests import Component
from tollgate_operator.tenant_logic import (
    FAILURES,
    READINESS,
    Phase,
    legacy_condition,
    migration_condition,
    phase_of,
    ready_condition,
    workload_condition,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def _ready(status: Status, reason: Reason, message: str = "") -> Condition:
    return Condition(ConditionType.READY, status, reason, message)


def test_transition_time_changes_only_when_the_status_flips() -> None:
    first = merge_conditions(None, [_ready(Status.FALSE, Reason.NOT_READY, "a")], 1, T0)
    assert first[0]["lastTransitionTime"] == "2026-03-01T12:00:00Z"

    same_status = merge_conditions(first, [_ready(Status.FALSE, Reason.UNAVAILABLE, "b")], 2, T1)
    assert same_status[0]["lastTransitionTime"] == "2026-03-01T12:00:00Z"
    assert (same_status[0]["reason"], same_status[0]["message"]) == ("Unavailable", "b")
    assert same_status[0]["observedGeneration"] == 2

    flipped = merge_conditions(same_status, [_ready(Status.TRUE, Reason.RECONCILED)], 2, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-03-01T12:05:00Z"


def test_conditions_of_other_types_are_kept_in_place() -> None:
    current = merge_conditions(None, [
        Condition(ConditionType.VALID, Status.TRUE, Reason.VALIDATED),
        Condition(ConditionType.PUBLISHED, Status.TRUE, Reason.PUBLISHED)], 1, T0)
    updated = merge_conditions(current, [
        Condition(ConditionType.PUBLISHED, Status.FALSE, Reason.NOT_PUBLISHED)], 2, T1)
    assert [c["type"] for c in updated] == ["Valid", "Published"]
    assert updated[0] == current[0]


def test_status_changes_hold_only_what_differs() -> None:
    current = {"phase": "Ready", "observedGeneration": 3, "kopf": {"x": 1}}
    assert status_changes(current, {"phase": "Ready", "observedGeneration": 3}) == {}
    assert status_changes(current, {"phase": "Degraded", "observedGeneration": 3}) == {
        "phase": "Degraded"}


def _deployment(replicas: int, available: str | None, generation: int = 2,
                observed: int = 2) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed, "availableReplicas": 1}
    if available is not None:
        status["conditions"] = [{"type": "Available", "status": available,
                                 "message": "Deployment does not have minimum availability."}]
    return {"metadata": {"name": "de-api", "generation": generation},
            "spec": {"replicas": replicas}, "status": status}


def test_workload_readiness_is_the_deployments_available_condition() -> None:
    assert workload_condition(_deployment(1, "True"), Component.API) == Condition(
        ConditionType.API_READY, Status.TRUE, Reason.AVAILABLE,
        "Deployment de-api: 1/1 replicas available")
    unavailable = workload_condition(_deployment(2, "False"), Component.API)
    assert (unavailable.status, unavailable.reason) == (Status.FALSE, Reason.UNAVAILABLE)
    assert "minimum availability" in unavailable.message
    # Available, but for an older generation: not yet
    stale = workload_condition(_deployment(1, "True", generation=3, observed=2), Component.API)
    assert stale.status is Status.FALSE
    assert workload_condition(_deployment(0, None), Component.API).reason is Reason.SCALED_TO_ZERO


def test_migration_job_decides_database_readiness() -> None:
    def job(*conditions: tuple[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": "de-migrate-1"}, "status": {"conditions": [
            {"type": t, "status": s, "message": "BackoffLimitExceeded"} for t, s in conditions]}}

    assert migration_condition(job()).reason is Reason.MIGRATION_RUNNING
    assert migration_condition(job(("Complete", "True"))).status is Status.TRUE
    failed = migration_condition(job(("Failed", "True")))
    assert (failed.status, failed.reason) == (Status.FALSE, Reason.MIGRATION_FAILED)


def test_ready_names_the_first_failing_condition_and_the_phase_follows() -> None:
    ok = [Condition(t, Status.TRUE, Reason.AVAILABLE) for t in (
        ConditionType.DATABASE_READY, ConditionType.CHARGING_READY, ConditionType.BILLING_READY,
        ConditionType.API_READY, ConditionType.CATALOG_SYNCED)]
    ready = ready_condition(ok)
    assert ready.is_true
    assert phase_of([*ok, ready], None) == Phase.READY

    no_cnpg = Condition(ConditionType.DATABASE_READY, Status.FALSE, Reason.CNPG_NOT_INSTALLED,
                        "install CloudNativePG")
    observed = [no_cnpg, *ok[1:]]
    ready = ready_condition(observed)
    assert (ready.status, ready.reason) == (Status.FALSE, Reason.CNPG_NOT_INSTALLED)
    assert "install CloudNativePG" in ready.message
    assert phase_of([*observed, ready], None) == Phase.DEGRADED

    starting = Condition(ConditionType.API_READY, Status.FALSE, Reason.UNAVAILABLE)
    observed = [*ok[:3], starting, ok[4]]
    assert phase_of([*observed, ready_condition(observed)], None) == Phase.PROVISIONING
    assert phase_of([*observed, ready_condition(observed)], Phase.READY) == Phase.DEGRADED


def test_an_invalid_offer_keeps_its_published_revision() -> None:
    previous = {"publishedRevision": 7, "lastPublishedTime": "2026-03-01T11:00:00Z",
                "conditions": merge_conditions(None, [
                    Condition(ConditionType.VALID, Status.TRUE, Reason.VALIDATED),
                    Condition(ConditionType.PUBLISHED, Status.TRUE, Reason.PUBLISHED)], 1, T0)}
    errors = ("Offer boost: eligibility.requires: unknown offer 'missing'",)
    verdict = Verdict(Status.FALSE, Reason.INVALID_REFERENCE, errors[0], errors)
    outcome = offer_outcome(previous, 2, verdict, None, T1)
    assert "publishedRevision" not in outcome.status  # revision 7 stays in force
    assert outcome.status["validationErrors"] == list(errors)
    valid, published = outcome.status["conditions"]
    assert (valid["status"], valid["reason"], valid["observedGeneration"]) == (
        "False", "InvalidReference", 2)
    assert (published["status"], published["reason"]) == ("False", "NotPublished")
    assert "catalog revision 7 stays in force" in published["message"]
    assert [(e.warning, e.reason) for e in outcome.events] == [(True, "InvalidReference")]
    assert outcome.retry_after_s is None  # a user's mistake is not retried


def test_publishing_sets_the_revision_and_time_once() -> None:
    verdict = Verdict(Status.TRUE, Reason.VALIDATED, "ok", revision=3, created=True)
    first = offer_outcome({}, 1, verdict, None, T0)
    assert first.status["publishedRevision"] == 3
    assert first.status["lastPublishedTime"] == "2026-03-01T12:00:00Z"
    assert [(e.reason, e.message) for e in first.events] == [("Published", "catalog revision 3")]

    again = offer_outcome(first.status, 1, Verdict(Status.TRUE, Reason.VALIDATED, "ok",
                                                    revision=3), None, T1)
    assert status_changes(first.status, again.status) == {}
    assert again.events == []


def test_skip_rules_follow_the_generation() -> None:
    published = {"conditions": merge_conditions(None, [
        Condition(ConditionType.PUBLISHED, Status.TRUE, Reason.PUBLISHED)], 4, T0)}
    assert already_reconciled(published, 4, ConditionType.PUBLISHED, revalidate=False)
    assert not already_reconciled(published, 5, ConditionType.PUBLISHED, revalidate=False)
    bad_reference = {"conditions": merge_conditions(None, [
        Condition(ConditionType.VALID, Status.FALSE, Reason.INVALID_REFERENCE)], 4, T0)}
    assert already_reconciled(bad_reference, 4, ConditionType.PUBLISHED, revalidate=False)
    assert not already_reconciled(bad_reference, 4, ConditionType.PUBLISHED, revalidate=True)
    bad_spec = {"conditions": merge_conditions(None, [
        Condition(ConditionType.VALID, Status.FALSE, Reason.INVALID_SPEC)], 4, T0)}
    assert already_reconciled(bad_spec, 4, ConditionType.PUBLISHED, revalidate=True)


def test_a_partner_is_ready_with_its_revision_and_credentials() -> None:
    verdict = Verdict(Status.TRUE, Reason.VALIDATED, "ok", revision=2, created=True)
    outcome = partner_outcome({}, 1, verdict, "streamflix-api-key", None, T0)
    assert outcome.status["activeRevision"] == 2
    assert outcome.status["credentialsSecretRef"] == {"name": "streamflix-api-key"}
    assert [c["type"] for c in outcome.status["conditions"]] == ["Valid", "Ready"]
    waiting = partner_outcome({}, 1, Verdict(Status.UNKNOWN, Reason.WAITING_FOR_TENANT,
                                             "Tenant x does not exist", retry=True), None, 5.0)
    assert waiting.retry_after_s == 5.0
    assert waiting.status["conditions"][1]["reason"] == "WaitingForTenant"


def test_a_spec_the_models_refuse_is_invalid_for_good_with_field_paths() -> None:
    # An older CRD (or a rule CEL cannot express) may let such a spec through.
    document = offer_document("broken", "market-de", "de",
                              thresholds=[{"allowance": "data-1gb", "percent": 80}],
                              prices=[{"name": "fee", "priceType": "recurring",
                                       "recurring": {"amount": 9.99}}])
    verdict = parse_spec(OfferSpec, document["spec"])
    assert isinstance(verdict, Verdict)
    assert (verdict.valid, verdict.reason) == (Status.FALSE, Reason.INVALID_SPEC)
    assert "spec.prices.0.recurring.amount: Input should be a valid string" in verdict.errors
    outcome = offer_outcome({}, 3, verdict, None, T0)
    assert outcome.retry_after_s is None  # never retried: it waits for a new generation
    assert outcome.status["validationErrors"] == list(verdict.errors)
    assert already_reconciled(outcome.status, 3, ConditionType.PUBLISHED, revalidate=True)
    assert not already_reconciled(outcome.status, 4, ConditionType.PUBLISHED, revalidate=True)


def _sync_job(name: str, created: str, state: str | None, message: str = "",
              active: int = 0) -> dict[str, Any]:
    status: dict[str, Any] = {"active": active} if active else {}
    if state is not None:
        status["conditions"] = [{"type": state, "status": "True", "reason": "R",
                                 "message": message}]
        status["completionTime"] = "2026-03-01T04:16:00Z" if state == "Complete" else None
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": status}


def test_legacy_synced_follows_the_last_finished_sync_job() -> None:
    t = tenant_workload(legacy={"mode": "reconcile", "extractsClaim": "legacy-files"})
    never = legacy_condition([], t)
    assert (never.status, never.reason) == (Status.UNKNOWN, Reason.LEGACY_SYNC_SCHEDULED)
    assert "'15 4 * * *', Europe/Berlin" in never.message
    running = legacy_condition([_sync_job("de-legacy-1", "2026-03-01T04:15:00Z", None,
                                          active=1)], t)
    assert (running.status, running.reason) == (Status.UNKNOWN, Reason.LEGACY_SYNC_RUNNING)
    ok = _sync_job("de-legacy-1", "2026-03-01T04:15:00Z", "Complete")
    failed = _sync_job("de-legacy-2", "2026-03-02T04:15:00Z", "Failed",
                       "Container sync for pod x failed with exit code 3 matching FailJob rule")
    now_running = _sync_job("de-legacy-3", "2026-03-03T04:15:00Z", None, active=1)
    synced = legacy_condition([ok], t)
    assert (synced.status, synced.reason) == (Status.TRUE, Reason.SYNCED)
    assert "de-legacy-1" in synced.message and "2026-03-01T04:16:00Z" in synced.message
    verdict = legacy_condition([now_running, ok, failed], t)  # a run in progress hides nothing
    assert (verdict.status, verdict.reason) == (Status.FALSE, Reason.LEGACY_SYNC_FAILED)
    assert "de-legacy-2" in verdict.message and "exit code 3" in verdict.message
    assert "PersistentVolumeClaim legacy-files" in verdict.message
    assert Reason.LEGACY_SYNC_FAILED in FAILURES  # a Warning event when it starts failing


def test_legacy_synced_never_holds_ready_back() -> None:
    observed = [Condition(c, Status.TRUE, Reason.RECONCILED) for c in READINESS]
    observed.append(Condition(ConditionType.LEGACY_SYNCED, Status.FALSE,
                              Reason.LEGACY_SYNC_FAILED, "Job failed"))
    ready = ready_condition(observed)
    assert ready.is_true
    assert phase_of([*observed, ready], Phase.READY) == Phase.READY
