"""Usage events as they arrive from the network, and why one can be refused."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tollgate_core.resources.offer import SERVICE_UNITS, Service, Unit

USAGE_EVENT_TYPE = "dev.tollgate.usage.v1"
QUANTITY_MAX = 10**15  # a petabyte of data in one record is a mediation bug, not usage


class RejectReason(StrEnum):
    """Dead-letter reason codes; stable, documented in docs/events.md."""

    MALFORMED_JSON = "MALFORMED_JSON"
    INVALID_EVENT = "INVALID_EVENT"
    WRONG_TENANT = "WRONG_TENANT"
    UNKNOWN_SUBSCRIBER = "UNKNOWN_SUBSCRIBER"
    NO_VALID_OFFER = "NO_VALID_OFFER"
    NO_PRICE = "NO_PRICE"


class UsageRejected(ValueError):
    """A usage event that cannot be rated; it goes to the dead-letter subject with `reason`."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str
    tenant: str
    subscriber: str
    service: Service
    quantity: int
    unit: Unit
    start_time: datetime
    attributes: dict[str, str] = field(default_factory=dict, hash=False)


def _require(data: dict[str, Any], key: str, kind: type, prefix: str = "") -> Any:
    value = data.get(key)
    if value is None:
        raise UsageRejected(RejectReason.INVALID_EVENT, f"{prefix}{key}: required")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"{prefix}{key}: wrong type {type(value).__name__}")
    return value


def parse_usage_event(raw: bytes, tenant: str) -> UsageEvent:
    """Decode and validate one usage event envelope; raise UsageRejected with the field and rule."""
    try:
        envelope = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageRejected(RejectReason.MALFORMED_JSON, str(exc)) from exc
    if not isinstance(envelope, dict):
        raise UsageRejected(RejectReason.MALFORMED_JSON, "event must be a JSON object")
    event_id = _require(envelope, "id", str)
    try:
        uuid.UUID(event_id)
    except ValueError as exc:
        raise UsageRejected(RejectReason.INVALID_EVENT, "id: must be a UUID") from exc
    if envelope.get("type") != USAGE_EVENT_TYPE:
        raise UsageRejected(RejectReason.INVALID_EVENT, f"type: must be {USAGE_EVENT_TYPE}")
    if envelope.get("tenant") != tenant:
        raise UsageRejected(RejectReason.WRONG_TENANT,
                            f"tenant: {envelope.get('tenant')!r} is not {tenant!r}")
    data = _require(envelope, "data", dict)
    try:
        service = Service(_require(data, "service", str, "data."))
    except ValueError as exc:
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.service: must be one of {[s.value for s in Service]}") from exc
    try:
        unit = Unit(_require(data, "unit", str, "data."))
    except ValueError as exc:
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.unit: must be one of {[u.value for u in Unit]}") from exc
    if SERVICE_UNITS[service] is not unit:
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.unit: {service} is measured in {SERVICE_UNITS[service]}")
    quantity = _require(data, "quantity", int, "data.")
    if not 0 <= quantity <= QUANTITY_MAX:
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.quantity: must be between 0 and {QUANTITY_MAX}")
    subscriber = _require(data, "subscriber", str, "data.")
    if not 1 <= len(subscriber) <= 64:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.subscriber: 1 to 64 characters")
    start_text = _require(data, "startTime", str, "data.")
    try:
        start_time = datetime.fromisoformat(start_text)
    except ValueError as exc:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.startTime: not RFC 3339") from exc
    if start_time.tzinfo is None:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.startTime: needs a UTC offset")
    attributes = data.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.attributes: must be an object")
    return UsageEvent(event_id, tenant, subscriber, service, quantity, unit, start_time,
                      {str(k): str(v) for k, v in attributes.items()})


def usage_envelope(event: UsageEvent, source: str = "tollgate") -> dict[str, Any]:
    """The wire form of a usage event (CloudEvents-style envelope)."""
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": source,
        "type": USAGE_EVENT_TYPE,
        "time": event.start_time.isoformat(),
        "tenant": event.tenant,
        "data": {
            "subscriber": event.subscriber,
            "service": event.service.value,
            "quantity": event.quantity,
            "unit": event.unit.value,
            "startTime": event.start_time.isoformat(),
            "attributes": event.attributes,
        },
    }
