"""Network APIs partners call through the API, metered against their agreement (ADR 0015).

A PartnerAgreement's `networkApis[]` entry with the API's name allows the calls, prices each
(`pricePerCall`, or graduated `tiers` of the month's calls; in the tenant's currency like
every price of the tenant) and bounds them (`rateLimitPerSecond` per agreement and API,
`monthlyQuota` per calendar month of the tenant's timezone). Pure values and rules here;
counting and booking is the store's.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from tollgate_core.domain.errors import DomainError, Forbidden, Invalid
from tollgate_core.domain.ledger import (
    AccountKind,
    Transfer,
    TransferCode,
    revenue_account,
    transfer_id,
)
from tollgate_core.domain.money import parse_micros
from tollgate_core.resources.partner import NetworkApi, PartnerAgreementSpec

_CALL_NAMESPACE = uuid.UUID("0b3c62f4-8d7e-4a55-9e2f-51c0d7a4e913")
_SESSION_NAMESPACE = uuid.UUID("b7d1e0a8-2f4c-4c6b-8a3e-9d5f1c2e7a40")

NETWORK_API_REVENUE = revenue_account("networkApi")
"""Revenue account every metered call is credited to."""

PROVISION_REQUEST_TYPE = "dev.tollgate.oss.provision.request.v1"


class NetworkApiName(StrEnum):
    """The `networkApis[].name` each operation is metered against."""

    QUALITY_ON_DEMAND = "qod"


class QosProfile(StrEnum):
    """CAMARA Quality-on-Demand QoS profiles."""

    QOS_E = "QOS_E"
    QOS_S = "QOS_S"
    QOS_M = "QOS_M"
    QOS_L = "QOS_L"


QOD_DURATION_MAX_S = 86_400
MSISDN = re.compile(r"^\+?[0-9]{6,15}$")


class QuotaExceeded(DomainError):
    """The agreement's monthly quota of this API is used up."""

    code = "QUOTA_EXCEEDED"

    def __init__(self, message: str, quota: int, resets_at: datetime) -> None:
        super().__init__(message)
        self.quota = quota
        self.resets_at = resets_at


class RateLimited(DomainError):
    """More calls in this second than the agreement's `rateLimitPerSecond`."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, limit: int, retry_after_s: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class CallTier:
    """Calls [start, end) of a month cost `price_micros` each; `end` None: no end."""

    start: int
    end: int | None
    price_micros: int


@dataclass(frozen=True, slots=True)
class ApiTerms:
    """What an agreement says about one network API, compiled for metering."""

    agreement: str
    api: str
    tiers: tuple[CallTier, ...]
    """Graduated prices by the call's number in its month (from 0): one open-ended tier for
    `pricePerCall`, none for a free API."""
    rate_limit_per_second: int
    monthly_quota: int | None

    def price_of_call(self, number: int) -> int:
        """Micro-units the call number `number` (0 = the month's first) costs."""
        return call_price(self.tiers, number)


def call_price(tiers: Sequence[CallTier], number: int) -> int:
    """The price of the month's call `number` (counted from 0): its tier's price, exactly.
    Graduated and per call: a call never straddles a tier, so nothing is split or rounded."""
    if number < 0:
        raise ValueError("calls are numbered from 0")
    for tier in tiers:
        if tier.start <= number and (tier.end is None or number < tier.end):
            return tier.price_micros
    return 0  # no tiers: a free API (the model refuses tiers that leave calls unpriced)


def calls_price(tiers: Sequence[CallTier], first: int, count: int) -> int:
    """What the calls numbered [first, first + count) of a month cost together: the part of
    the run in each tier times that tier's price (the closed form of summing `call_price`)."""
    total = 0
    end = first + count
    for tier in tiers:
        low = max(first, tier.start)
        high = end if tier.end is None else min(end, tier.end)
        if high > low:
            total += (high - low) * tier.price_micros
    return total


def compile_tiers(entry: NetworkApi) -> tuple[CallTier, ...]:
    if entry.tiers is not None:
        return tuple(CallTier(t.from_, t.to, parse_micros(t.price_per_call))
                     for t in entry.tiers)
    if entry.price_per_call is not None:
        return (CallTier(0, None, parse_micros(entry.price_per_call)),)
    return ()


def api_terms(agreement: str, spec: PartnerAgreementSpec | None, api: str,
              when: datetime) -> ApiTerms:
    """The terms under which `agreement` may call `api` at `when`; Forbidden otherwise."""
    if spec is None:
        raise Forbidden(f"partner agreement {agreement!r} is not in the published catalog")
    valid = spec.valid_for
    if (valid.start is not None and when < valid.start) or (
            valid.end is not None and when >= valid.end):
        raise Forbidden(f"partner agreement {agreement!r} is not valid at {when.isoformat()}")
    for entry in spec.network_apis:
        if entry.name == api:
            return ApiTerms(agreement, api, compile_tiers(entry), entry.rate_limit_per_second,
                            entry.monthly_quota)
    raise Forbidden(f"partner agreement {agreement!r} does not include the network API "
                    f"{api!r}")


def call_id(tenant: str, agreement: str, api: str, idempotency_key: str) -> uuid.UUID:
    """Deterministic: a repeat of a call (same idempotency key) is the same call."""
    return uuid.uuid5(_CALL_NAMESPACE, f"{tenant}/{agreement}/{api}/{idempotency_key}")


def session_id(call: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(_SESSION_NAMESPACE, str(call))


def request_digest(request: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def month_start(when: datetime, timezone: str) -> date:
    """The calendar month (its first day) of `when` in the tenant's timezone."""
    return when.astimezone(ZoneInfo(timezone)).date().replace(day=1)


def next_month_start(month: date, timezone: str) -> datetime:
    """The instant the month after `month` starts (local midnight): when a quota resets."""
    following = date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return datetime.combine(following, time(), ZoneInfo(timezone))


def window_start(when: datetime) -> datetime:
    """The one-second rate window `when` falls in."""
    return when.astimezone(UTC).replace(microsecond=0)


def partner_receivable_account(agreement: str) -> str:
    """What a partner owes for the network API calls it made."""
    return f"{AccountKind.RECEIVABLE.value}:partner:{agreement}"


def call_charge(call: uuid.UUID, agreement: str, price_micros: int,
                currency: str) -> Transfer | None:
    """The ledger transfer of one call (none for a free one); its id is the call's."""
    if price_micros == 0:
        return None
    return Transfer(transfer_id(str(call), "networkApi"), partner_receivable_account(agreement),
                    NETWORK_API_REVENUE, price_micros, currency, TransferCode.NETWORK_API,
                    str(call))


@dataclass(frozen=True, slots=True)
class QodRequest:
    msisdn: str
    profile: QosProfile
    duration_seconds: int

    def check(self) -> None:
        if not MSISDN.match(self.msisdn):
            raise Invalid("msisdn must be a phone number of 6 to 15 digits, optionally with a "
                          "leading +", field="msisdn")
        if not 1 <= self.duration_seconds <= QOD_DURATION_MAX_S:
            raise Invalid(f"durationSeconds must be between 1 and {QOD_DURATION_MAX_S}",
                          field="durationSeconds")

    def as_request(self) -> dict[str, Any]:
        return {"op": "requestQualityOnDemand", "msisdn": self.msisdn,
                "profile": self.profile.value, "durationSeconds": self.duration_seconds}


def provision_request(tenant: str, session: uuid.UUID, agreement: str, partner_id: str,
                      request: QodRequest, at: datetime) -> bytes:
    """The `oss.provision.request` envelope asking the network for a QoD session."""
    envelope = {
        "specversion": "1.0", "id": str(session), "source": "tollgate/network-api",
        "type": PROVISION_REQUEST_TYPE, "time": at.isoformat(), "tenant": tenant,
        "data": {"kind": "qodSession", "sessionId": str(session), "agreement": agreement,
                 "partnerId": partner_id, "msisdn": request.msisdn,
                 "profile": request.profile.value,
                 "durationSeconds": request.duration_seconds}}
    return json.dumps(envelope, separators=(",", ":")).encode()
