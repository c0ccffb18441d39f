"""Status of the custom resources: what the operator observes and reports.

The operator builds these models and writes `model_dump(by_alias=True, mode="json",
exclude_none=True)` to the status subresource; the CRDs' status schemas are generated from
them (see :mod:`tollgate_core.resources.crd`). Conditions follow Kubernetes' metav1.Condition
and form a map keyed by `type`.

Invariant: a status as the API server returns it parses, though it also holds Kopf's own
`kopf` bookkeeping: the three status models ignore fields they do not declare (the API server
has pruned any but `kopf` already); every other model refuses unknown fields.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import ConfigDict, Field

from tollgate_core.resources.common import ListMapKeys, Ref, Spec


class ConditionStatus(StrEnum):
    """Whether a condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Spec):
    """One aspect of the resource's state (after Kubernetes' metav1.Condition)."""

    type: str = Field(max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$",
                      description="Condition type in CamelCase, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Why the condition is in its status, as a CamelCase word a program can test.",
    )
    message: str = Field(default="", max_length=32768,
                         description="Human-readable detail of the reason.")
    last_transition_time: datetime = Field(
        description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from.")


# One entry per type, merged entry by entry by server-side apply.
Conditions = Annotated[list[Condition], ListMapKeys("type")]


def _conditions(types: str) -> Any:
    return Field(default_factory=list, max_length=16,
                 description=f"Latest observations of the resource's state; types: {types}.")


class TenantPhase(StrEnum):
    """Summary of a tenant's lifecycle for `kubectl get`."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DEGRADED = "Degraded"
    DELETING = "Deleting"


class Endpoints(Spec):
    """Where the tenant's workloads are reached."""

    graphql: str | None = Field(default=None, max_length=2048,
                                description="URL of the tenant's GraphQL API.")


class TenantStatus(Spec):
    """Observed state of a Tenant, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    phase: TenantPhase | None = Field(
        default=None, description="Pending, Provisioning, Ready, Degraded or Deleting.")
    conditions: Conditions = _conditions(
        "Ready, DatabaseReady, ChargingReady, BillingReady, ApiReady, CatalogSynced; "
        "LegacySynced while legacy.mode is mirror or reconcile (not part of Ready)")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last reconciled.")
    endpoints: Endpoints | None = Field(default=None, description="Where the tenant is reached.")
    catalog_revision: int | None = Field(
        default=None, ge=0, description="Catalog revision the tenant's engines have loaded.")


class OfferStatus(Spec):
    """Observed state of an Offer, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    conditions: Conditions = _conditions("Valid, Published")
    published_revision: int | None = Field(
        default=None, ge=0, description="Catalog revision this offer was last published in.")
    last_published_time: datetime | None = Field(
        default=None, description="When the offer was last published (RFC 3339).")
    validation_errors: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=list, max_length=64,
        description="Why the spec is not valid, one 'field.path: rule' line per problem.")


class PartnerAgreementStatus(Spec):
    """Observed state of a PartnerAgreement, written by the operator."""

    model_config = ConfigDict(extra="ignore")

    conditions: Conditions = _conditions("Ready, Valid")
    credentials_secret_ref: Ref | None = Field(
        default=None, description="Secret holding the partner's API key.")
    active_revision: int | None = Field(
        default=None, ge=0, description="Catalog revision holding the agreement's settlement "
        "rules.")
