"""Tenant: one BSS instance for one market or brand."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
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
    validations,
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
    reminder_days: list[Annotated[int, Field(ge=1, le=365)]] = Field(
        default_factory=lambda: [3, 10], max_length=5,
        description="Days after the due date on which a payment reminder is sent.")
    suspend_after_days: int = Field(
        default=30, ge=1, le=365,
        description="Days after the due date after which an unpaid account's subscriptions are "
        "suspended (resumed when paid).")


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


LEGACY_SCHEDULE_DEFAULT = "15 4 * * *"
"""04:15 in the tenant's time zone: after midnight's usage has settled, and outside the hours
in which daylight saving time skips or repeats a time (01:00-03:00 in most zones)."""
_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_WEEKDAYS = "sun|mon|tue|wed|thu|fri|sat"
# (name, values as a regex, lowest, highest, names for 1.. or 0.., "?" allowed)
_CRON_FIELDS: tuple[tuple[str, str, int, int, str, bool], ...] = (
    ("minute", "[0-5]?[0-9]", 0, 59, "", False),
    ("hour", "[01]?[0-9]|2[0-3]", 0, 23, "", False),
    ("day of month", "0?[1-9]|[12][0-9]|3[01]", 1, 31, "", True),
    ("month", f"0?[1-9]|1[0-2]|{_MONTHS}", 1, 12, _MONTHS, False),
    ("day of week", f"[0-6]|{_WEEKDAYS}", 0, 6, _WEEKDAYS, True),
)
_CRON_MACROS = ("yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly")


def _cron_field_regex(values: str, question: bool) -> str:
    element = f"([*]{'|[?]' if question else ''}|({values})(-({values}))?)(/[0-9]{{1,2}})?"
    return f"{element}(,{element})*"


# Written without backslashes, so the same text is a Python regex and a CEL string literal.
# Names of months and days in any case, as the CronJob controller reads them; macros in lower
# case only, likewise.
CRON_REGEX = ("^(@(" + "|".join(_CRON_MACROS) + ")|(?i:"
              + "[ ]+".join(f"({_cron_field_regex(v, q)})" for _, v, _, _, _, q in _CRON_FIELDS)
              + "))$")
CRON_MESSAGE = ("legacy.schedule must be a cron expression: five fields (minute hour "
                "day-of-month month day-of-week, e.g. '15 4 * * *') or one of "
                + ", ".join(f"@{m}" for m in _CRON_MACROS))
_CRON = re.compile(CRON_REGEX)
# At admission, CEL runs the same regex (the ranges and steps check_cron adds are for the model).
_CRON_SCHEMA: dict[str, Any] = {"x-kubernetes-validations": validations([
    Cel(f"self.matches('{CRON_REGEX}')", CRON_MESSAGE)])}


def _cron_value(text: str, names: str, low: int) -> int:
    named = names.split("|") if names else []
    return named.index(text.lower()) + low if text.lower() in named else int(text)


def check_cron(schedule: str) -> str:
    """The schedule, when Kubernetes' CronJob controller accepts it (robfig/cron's standard
    parser): the shape (also checked at admission by CEL), then what a regex cannot check —
    ranges that run backwards and zero steps."""
    if not _CRON.match(schedule):
        raise ValueError(f"{CRON_MESSAGE}; got {schedule!r}")
    if schedule.startswith("@"):
        return schedule
    for (name, _, low, _, names, _), field in zip(_CRON_FIELDS, schedule.split(), strict=True):
        for element in field.split(","):
            span, _, step = element.partition("/")
            if step and int(step) == 0:
                raise ValueError(f"legacy.schedule: the {name} field steps by 0 in {element!r}")
            first, _, last = span.partition("-")
            if last and _cron_value(first, names, low) > _cron_value(last, names, low):
                raise ValueError(f"legacy.schedule: the {name} range {span!r} runs backwards")
    return schedule


class LegacyMode(StrEnum):
    NONE = "none"
    MIRROR = "mirror"
    RECONCILE = "reconcile"


# On `schedule`, the operator's CronJob `<tenant>-legacy` runs `tollgate assurance sync`: it
# mirrors Tollgate's rated usage and invoices into the claim's outbox/ and, in reconcile mode,
# reconciles the extracts found in its inbox/ (docs/legacy-feed.md, ADR 0017).
class LegacySpec(Spec):
    """Integration with the legacy system of record (docs/legacy-feed.md)."""

    mode: LegacyMode = Field(
        default=LegacyMode.NONE,
        description="none: no legacy system; mirror: copy rated usage and invoices to it; "
        "reconcile: also compare against its extracts on `schedule`.",
    )
    schedule: str = Field(
        default=LEGACY_SCHEDULE_DEFAULT, min_length=1, max_length=100,
        description="Cron schedule of the sync, in the tenant's time zone (five fields, or "
        "@hourly, @daily, ...). Default: 04:15 every day.",
        json_schema_extra=_CRON_SCHEMA,
    )
    extracts_claim: str | None = Field(
        default=None, max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description="PersistentVolumeClaim in the Tenant's namespace shared with the legacy "
        "system's file gateway (ReadWriteMany): extracts are dropped in inbox/, mirrored files "
        "are written to outbox/, reconciliation reports to reports/. Required unless mode is "
        "none.",
    )
    amount_unit: Literal["micro", "minor"] = Field(
        default="micro",
        description="Unit of the amounts in mirrored files: micro (10^-6 of the major unit, "
        "Tollgate's own) or minor (the currency's minor unit, rounded half-even).",
    )
    tolerance_micros: int = Field(
        default=0, ge=0, le=1_000_000_000_000,
        description="Reconciliation: amount differences up to this many micro-units are no "
        "variance (a difference must exceed this and `tolerancePpm`).",
    )
    tolerance_ppm: int = Field(
        default=0, ge=0, le=1_000_000,
        description="Reconciliation: nor are differences up to this many millionths of "
        "Tollgate's amount.",
    )

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("self.mode == 'none' || has(self.extractsClaim)",
            "legacy.extractsClaim is required when legacy.mode is mirror or reconcile"),
    )

    @model_validator(mode="before")
    @classmethod
    def _stored_without_schedule(cls, data: object) -> object:
        """Specs stored before the schedule had a default carry `schedule: null` (tenants in
        the database are model dumps): that is the default schedule."""
        if isinstance(data, dict) and "schedule" in data and data["schedule"] is None:
            data = {k: v for k, v in data.items() if k != "schedule"}
        return data

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @model_validator(mode="after")
    def _claim_unless_none(self) -> LegacySpec:
        if self.mode is not LegacyMode.NONE and not self.extracts_claim:
            raise ValueError("legacy.extractsClaim is required when legacy.mode is mirror or "
                             "reconcile")
        return self


# JWK members that only a private (or symmetric) key has: they must never sit in a spec.
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
JWKS_MAX_CHARS = 65_536
# https, or plain http to this machine's loopback only (local mode and tests).
JWKS_URI_PATTERN = r"^(https://[^\s/?#]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?)(/\S*)?$"


def check_jwks_document(text: str) -> str:
    """Refuse what cannot be a public JWK Set (RFC 7517 §5): not JSON, no `keys`, a key
    without `kty`, or a private or symmetric key. Which keys the API can use (RS256, ES256)
    is decided when it loads them."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"api.auth.jwks is not JSON: {exc}") from exc
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('api.auth.jwks must be a JWK Set: {"keys": [...]} with at least one key')
    for index, key in enumerate(keys):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise ValueError(f"api.auth.jwks: keys[{index}] is not a JWK (no `kty`)")
        private = sorted(_PRIVATE_JWK_MEMBERS & key.keys())
        if private:
            raise ValueError(f"api.auth.jwks: keys[{index}] has private or symmetric key "
                             f"material ({', '.join(private)}); publish public keys only")
    return text


class ApiAuthSpec(Spec):
    """Who issues the bearer tokens of this tenant (an OIDC provider or any JWT issuer), and
    the public keys that sign them. Tokens must carry `iss`, `exp`, `sub`, `tenant` (this
    Tenant's name) and `roles`, signed RS256 or ES256."""

    issuer: str = Field(
        min_length=1, max_length=512,
        description="The exact `iss` claim of this tenant's tokens, e.g. "
        "https://login.example.com/realms/de (an https URL or any string).",
    )
    audience: str | None = Field(
        default=None, min_length=1, max_length=512,
        description="When set, a token's `aud` claim must name it (e.g. the API's client id).",
    )
    jwks: str | None = Field(
        default=None, min_length=2, max_length=JWKS_MAX_CHARS,
        description="The issuer's public keys inline, as a JWK Set JSON document "
        "(air-gapped installs). Exactly one of `jwks` and `jwksUri`.",
    )
    jwks_uri: str | None = Field(
        default=None, max_length=2048, pattern=JWKS_URI_PATTERN,
        description="HTTPS URL of the issuer's JWK Set (OIDC `jwks_uri`), fetched by the API, "
        "cached and fetched again when a token names an unknown `kid`. Plain http only to "
        "127.0.0.1, localhost or [::1]. Exactly one of `jwks` and `jwksUri`.",
    )

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel("has(self.jwks) != has(self.jwksUri)",
            "exactly one of api.auth.jwks and api.auth.jwksUri is required"),
    )

    @field_validator("jwks")
    @classmethod
    def _jwk_set(cls, value: str | None) -> str | None:
        return None if value is None else check_jwks_document(value)

    @model_validator(mode="after")
    def _one_key_source(self) -> ApiAuthSpec:
        if (self.jwks is None) == (self.jwks_uri is None):
            raise ValueError("exactly one of api.auth.jwks and api.auth.jwksUri is required")
        return self


class ApiSpec(Spec):
    """GraphQL API workload."""

    replicas: int = Field(default=2, ge=0, le=50, description="GraphQL API replicas.")
    hostnames: list[str] = Field(
        default_factory=list, max_length=16,
        description="Host names the API is served on (Ingress or Gateway routes).",
    )
    introspection: bool = Field(
        default=False,
        description="Serve schema introspection and the GraphiQL page (handy in development; "
        "off by default in clusters, on in `make run`).")
    auth: ApiAuthSpec | None = Field(
        default=None,
        description="The tenant's token issuer and its keys. Without it only the platform's "
        "own HS256 tokens (local mode) and partner API keys are accepted.",
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced_auth_issuer(cls, data: object) -> object:
        """`authIssuer` (never read by anything) became `auth`: specs stored before carry
        `authIssuer: null`, which is dropped; a value is refused with the way forward."""
        if isinstance(data, dict) and "authIssuer" in data:
            if data["authIssuer"] is not None:
                raise ValueError("api.authIssuer was replaced by api.auth: set api.auth.issuer "
                                 "and one of api.auth.jwks or api.auth.jwksUri")
            data = {k: v for k, v in data.items() if k != "authIssuer"}
        return data


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
