"""Usage events as they arrive from the network, and why one can be refused."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NoReturn

import orjson

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


def _refuse(data: dict[str, Any], key: str, kind: type, prefix: str = "") -> NoReturn:
    """Raise the refusal of a field found missing or of the wrong type."""
    _require(data, key, kind, prefix)
    raise AssertionError(f"{prefix}{key} was acceptable after all")


_UUID_CHARS = frozenset("0123456789abcdef-")


def _canonical_uuid(text: str) -> bool:
    """Whether `text` is a UUID in canonical form (lower-case hex, hyphens at 8-4-4-4-12);
    other spellings `uuid.UUID` accepts are checked by it (slower)."""
    return (len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-"
            and text.count("-") == 4 and _UUID_CHARS.issuperset(text))
_SERVICES = {s.value: s for s in Service}
_UNITS = {u.value: u for u in Unit}


def parse_usage_event(raw: bytes, tenant: str) -> UsageEvent:
    """Decode and validate one usage event envelope; raise UsageRejected with the field and rule.

    This runs for every event the charging engine rates, so it checks types directly (JSON
    values are exactly str, int, dict, …) and builds error details only for a refusal. orjson
    refuses what PostgreSQL could not store either (invalid UTF-8, lone surrogates), so such
    an event is dead-lettered instead of failing its whole batch."""
    envelope: Any
    try:
        envelope = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UsageRejected(RejectReason.MALFORMED_JSON, str(exc)) from exc
    if type(envelope) is not dict:
        raise UsageRejected(RejectReason.MALFORMED_JSON, "event must be a JSON object")
    event_id: Any = envelope.get("id")
    if type(event_id) is not str:
        _refuse(envelope, "id", str)
    if not _canonical_uuid(event_id):
        try:
            uuid.UUID(event_id)
        except ValueError as exc:
            raise UsageRejected(RejectReason.INVALID_EVENT, "id: must be a UUID") from exc
    if envelope.get("type") != USAGE_EVENT_TYPE:
        raise UsageRejected(RejectReason.INVALID_EVENT, f"type: must be {USAGE_EVENT_TYPE}")
    if envelope.get("tenant") != tenant:
        raise UsageRejected(RejectReason.WRONG_TENANT,
                            f"tenant: {envelope.get('tenant')!r} is not {tenant!r}")
    data: Any = envelope.get("data")
    if type(data) is not dict:
        _refuse(envelope, "data", dict)
    text: Any = data.get("service")
    service = _SERVICES.get(text) if type(text) is str else None
    if service is None:
        _require(data, "service", str, "data.")
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.service: must be one of {[s.value for s in Service]}")
    text = data.get("unit")
    unit = _UNITS.get(text) if type(text) is str else None
    if unit is None:
        _require(data, "unit", str, "data.")
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.unit: must be one of {[u.value for u in Unit]}")
    if SERVICE_UNITS[service] is not unit:
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.unit: {service} is measured in {SERVICE_UNITS[service]}")
    quantity: Any = data.get("quantity")
    if type(quantity) is not int:
        _refuse(data, "quantity", int, "data.")
    if not 0 <= quantity <= QUANTITY_MAX:
        raise UsageRejected(RejectReason.INVALID_EVENT,
                            f"data.quantity: must be between 0 and {QUANTITY_MAX}")
    subscriber: Any = data.get("subscriber")
    if type(subscriber) is not str:
        _refuse(data, "subscriber", str, "data.")
    if not 1 <= len(subscriber) <= 64:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.subscriber: 1 to 64 characters")
    if "\x00" in subscriber:  # PostgreSQL text cannot hold it: the batch would fail
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.subscriber: NUL character")
    start_text: Any = data.get("startTime")
    if type(start_text) is not str:
        _refuse(data, "startTime", str, "data.")
    try:
        start_time = datetime.fromisoformat(start_text)
    except ValueError as exc:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.startTime: not RFC 3339") from exc
    if start_time.tzinfo is None:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.startTime: needs a UTC offset")
    attributes: Any = data.get("attributes") or {}
    if type(attributes) is not dict:
        raise UsageRejected(RejectReason.INVALID_EVENT, "data.attributes: must be an object")
    return UsageEvent(event_id, tenant, subscriber, service, quantity, unit, start_time,
                      {str(k): str(v) for k, v in attributes.items()} if attributes else {})


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
