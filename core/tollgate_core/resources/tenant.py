"""Tenant: one BSS instance for one market or brand."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from tollgate_core.resources.common import (
    Cel,
    CurrencyCode,
    ListMapKeys,
    Name,
    ObjectMeta,
    Percent,
    Resource,
    Spec,
)


class TaxRule(Spec):
    """How one tax category is taxed in this market."""

    category: Name = Field(description="Tax category that offers name in `taxCategory`.")
    rate: Percent = Field(description="Tax rate in percent.")
    inclusive: bool = Field(
        default=False, description="True when prices of this category already include the tax."
    )


class BillingSpec(Spec):
    """Bill cycle and invoice numbering."""

    cycle_day: int = Field(default=1, ge=1, le=28, description="Day of month a bill cycle starts.")
    payment_terms_days: int = Field(default=14, ge=0, le=120, description="Days until due.")
    invoice_prefix: str = Field(
        default="INV", pattern=r"^[A-Z0-9-]{1,12}$", description="Invoice number series prefix."
    )


class FailureHandling(StrEnum):
    TERMINATE = "terminate"
    CONTINUE = "continue"


class ChargingSpec(Spec):
    """Charging engine workload and online-charging policy."""

    replicas: int = Field(default=2, ge=0, le=50, description="Charging engine replicas.")
    batch_max: int = Field(default=500, ge=1, le=10_000, description="Usage events per batch.")
    reservation_validity_seconds: int = Field(
        default=300, ge=10, le=86_400, description="Lifetime of an online-charging reservation."
    )
    failure_handling: FailureHandling = Field(
        default=FailureHandling.TERMINATE,
        description="When the engine cannot decide: terminate refuses service; continue grants "
        "`continueQuotaUnits` and books them to a receivable.",
    )
    continue_quota_units: int = Field(default=0, ge=0, description="Units granted on failure.")


class DatabaseMode(StrEnum):
    MANAGED = "managed"
    EXTERNAL = "external"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class DatabaseSpec(Spec):
    """Where the tenant's PostgreSQL lives."""

    mode: DatabaseMode = Field(
        default=DatabaseMode.MANAGED,
        description="managed: a CloudNativePG Cluster is created; external: use `secretRef`.",
    )
    secret_ref: str | None = Field(
        default=None, description="Secret holding `dsn` when mode is external."
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="Retain keeps the database when the Tenant is deleted.",
    )

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("self.mode != 'external' || has(self.secretRef)", "database.secretRef is required "
            "when database.mode is external"),
    )

    @model_validator(mode="after")
    def _external_needs_secret(self) -> DatabaseSpec:
        if self.mode is DatabaseMode.EXTERNAL and not self.secret_ref:
            raise ValueError("database.secretRef is required when database.mode is external")
        return self


class EventsSpec(Spec):
    """NATS JetStream the tenant's workloads use."""

    url: str = Field(default="nats://nats:4222", description="NATS URL.")


class LegacySpec(Spec):
    """Integration with the legacy system of record."""

    mode: Literal["none", "mirror", "reconcile"] = Field(
        default="none",
        description="none: no legacy system; mirror: copy rated usage and invoices to it; "
        "reconcile: also compare against its extracts on `schedule`.",
    )
    schedule: str | None = Field(default=None, description="Cron schedule of reconciliation.")


class ApiSpec(Spec):
    """GraphQL API workload."""

    replicas: int = Field(default=2, ge=0, le=50, description="GraphQL API replicas.")
    hostnames: list[str] = Field(
        default_factory=list, max_length=16,
        description="Host names the API is served on (Ingress or Gateway routes).",
    )
    auth_issuer: str | None = Field(default=None, description="JWT issuer (OIDC) for customers.")


class TenantSpec(Spec):
    """One BSS instance for one market or brand."""

    market: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 market code.")
    currency: CurrencyCode = Field(
        description="ISO 4217 currency code every price of the tenant is in, e.g. EUR.")
    timezone: str = Field(default="UTC", description="IANA timezone, e.g. Europe/Berlin.")
    locale: str = Field(
        default="en-US", pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$",
        description="BCP 47 language tag for invoices and notifications, e.g. de-DE.",
    )
    taxes: Annotated[list[TaxRule], ListMapKeys("category")] = Field(
        default_factory=list, max_length=32,
        description="Tax rules by tax category; each category may appear once.",
    )
    billing: BillingSpec = Field(default_factory=BillingSpec)
    charging: ChargingSpec = Field(default_factory=ChargingSpec)
    database: DatabaseSpec = Field(default_factory=DatabaseSpec)
    events: EventsSpec = Field(default_factory=EventsSpec)
    legacy: LegacySpec = Field(default_factory=LegacySpec)
    api: ApiSpec = Field(default_factory=ApiSpec)

    @field_validator("timezone")
    @classmethod
    def _iana_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA timezone") from exc
        return value


class Tenant(Resource):
    """One BSS instance for one market or brand; the operator runs its charging, billing and
    API workloads and keeps its catalog revisions."""

    metadata: ObjectMeta
    spec: TenantSpec
