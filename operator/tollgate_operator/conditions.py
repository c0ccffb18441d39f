"""Status conditions after Kubernetes' metav1.Condition, and status diffs.

Invariants: a condition's `lastTransitionTime` changes only when its `status` flips; every
condition carries the `observedGeneration` it was computed from; types and reasons are closed
sets (StrEnum), so a program can test them. Status is written only when it changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tollgate_core.resources.status import ConditionStatus as Status

__all__ = ["Condition", "ConditionType", "Reason", "Status", "find", "holds",
           "merge_conditions", "status_changes", "timestamp"]


class ConditionType(StrEnum):
    # Tenant
    READY = "Ready"
    DATABASE_READY = "DatabaseReady"
    CHARGING_READY = "ChargingReady"
    BILLING_READY = "BillingReady"
    API_READY = "ApiReady"
    CATALOG_SYNCED = "CatalogSynced"
    LEGACY_SYNCED = "LegacySynced"
    # Offer, PartnerAgreement
    VALID = "Valid"
    PUBLISHED = "Published"


class Reason(StrEnum):
    """Why a condition has its status: one CamelCase word per cause."""

    # shared
    RECONCILED = "Reconciled"
    NOT_READY = "NotReady"
    INVALID_SPEC = "InvalidSpec"
    DELETING = "Deleting"
    # workloads (Deployment availability)
    AVAILABLE = "Available"
    UNAVAILABLE = "Unavailable"
    SCALED_TO_ZERO = "ScaledToZero"
    # database
    MIGRATED = "Migrated"
    MIGRATION_RUNNING = "MigrationRunning"
    MIGRATION_FAILED = "MigrationFailed"
    SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105  (a reason, not a secret)
    SECRET_KEY_MISSING = "SecretKeyMissing"  # noqa: S105
    CNPG_NOT_INSTALLED = "CNPGNotInstalled"
    CLUSTER_NOT_READY = "ClusterNotReady"
    CLUSTER_REJECTED = "ClusterRejected"
    APP_ROLE_PENDING = "AppRolePending"
    APP_ROLE_FAILED = "AppRoleFailed"
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    # catalog
    SYNCED = "Synced"
    DATABASE_NOT_READY = "DatabaseNotReady"
    VALIDATED = "Validated"
    INVALID_REFERENCE = "InvalidReference"
    PUBLISHED = "Published"
    NOT_PUBLISHED = "NotPublished"
    WAITING_FOR_TENANT = "WaitingForTenant"
    CREDENTIALS_ISSUED = "CredentialsIssued"
    # legacy sync (the CronJob's last Job)
    LEGACY_SYNC_SCHEDULED = "LegacySyncScheduled"
    LEGACY_SYNC_RUNNING = "LegacySyncRunning"
    LEGACY_SYNC_FAILED = "LegacySyncFailed"


@dataclass(frozen=True, slots=True)
class Condition:
    """One observation; `last_transition_time` is filled in by :func:`merge_conditions`."""

    type: ConditionType
    status: Status
    reason: Reason
    message: str = ""

    @property
    def is_true(self) -> bool:
        return self.status is Status.TRUE


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times (`2026-01-02T03:04:05Z`)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(current: Sequence[Mapping[str, Any]] | None,
                     observed: Iterable[Condition], generation: int,
                     now: datetime | None = None) -> list[dict[str, Any]]:
    """The new `status.conditions` list: `observed` replaces same-typed entries.

    A condition keeps its `lastTransitionTime` unless its status flipped; conditions of
    other types already present are kept, so two writers may own different types.
    """
    by_type = {str(c.get("type")): dict(c) for c in current or ()}
    stamp = timestamp(now)
    for condition in observed:
        previous = by_type.get(condition.type)
        flipped = previous is None or previous.get("status") != condition.status
        by_type[condition.type] = {
            "type": str(condition.type),
            "status": str(condition.status),
            "reason": str(condition.reason),
            "message": condition.message,
            "lastTransitionTime": stamp if flipped or previous is None
            else previous.get("lastTransitionTime", stamp),
            "observedGeneration": generation,
        }
    return list(by_type.values())


def find(conditions: Sequence[Mapping[str, Any]] | None,
         type_: str) -> Mapping[str, Any] | None:
    """The condition of `type_` (ours or another controller's, e.g. `Available`), if any."""
    return next((c for c in conditions or () if c.get("type") == type_), None)


def holds(conditions: Sequence[Mapping[str, Any]] | None, type_: ConditionType,
          generation: int, reasons: Iterable[Reason] = ()) -> bool:
    """True when the condition was computed for `generation` and is True (or, with `reasons`,
    has one of those reasons whatever its status)."""
    condition = find(conditions, type_)
    if condition is None or condition.get("observedGeneration") != generation:
        return False
    wanted = set(reasons)
    if wanted:
        return condition.get("reason") in wanted
    return condition.get("status") == Status.TRUE


def status_changes(current: Mapping[str, Any] | None,
                   desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields of `desired` that differ from `current` (a merge patch).

    Fields absent from `desired` are left alone; a None value removes the field.
    """
    current = current or {}
    return {key: value for key, value in desired.items() if current.get(key) != value}
