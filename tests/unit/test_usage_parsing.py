"""Parsing usage events: what is accepted as it is, and the reason and field of each refusal."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tollgate_core.domain.usage import (
    USAGE_EVENT_TYPE,
    RejectReason,
    UsageRejected,
    parse_usage_event,
)
from tollgate_core.resources.offer import Service, Unit

TENANT = "de"
EVENT_ID = "0b0e6e2c-5b1c-4d8f-9c8e-8f2b5e2b1a11"


def envelope(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0", "id": EVENT_ID, "source": "test", "type": USAGE_EVENT_TYPE,
        "time": "2026-11-23T10:00:00+01:00", "tenant": TENANT,
        "data": {"subscriber": "491701234567", "service": "data", "quantity": 1024,
                 "unit": "bytes", "startTime": "2026-11-23T10:00:00+01:00",
                 "attributes": {"zone": "eu", "cell": 42}}}
    data = changes.pop("data", {})
    body.update(changes)
    body["data"] = None if data is None else {**body["data"], **data}
    return body


def refusal(raw: bytes) -> UsageRejected:
    with pytest.raises(UsageRejected) as caught:
        parse_usage_event(raw, TENANT)
    return caught.value


def test_a_valid_event_is_parsed_field_by_field() -> None:
    event = parse_usage_event(json.dumps(envelope()).encode(), TENANT)
    assert event.id == EVENT_ID
    assert (event.tenant, event.subscriber) == (TENANT, "491701234567")
    assert (event.service, event.unit, event.quantity) == (Service.DATA, Unit.BYTES, 1024)
    assert event.start_time == datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
    assert event.start_time.utcoffset() == timedelta(hours=1)
    assert event.attributes == {"zone": "eu", "cell": "42"}  # values as strings


def test_a_uuid_in_another_spelling_is_accepted_and_kept_as_sent() -> None:
    upper = EVENT_ID.upper()
    assert parse_usage_event(json.dumps(envelope(id=upper)).encode(), TENANT).id == upper
    braced = "{" + EVENT_ID + "}"
    assert parse_usage_event(json.dumps(envelope(id=braced)).encode(), TENANT).id == braced
    zeros = str(uuid.UUID(int=0))  # canonical, but has no hex letter at all
    assert parse_usage_event(json.dumps(envelope(id=zeros)).encode(), TENANT).id == zeros


@pytest.mark.parametrize(("changes", "reason", "detail"), [
    ({"id": None}, RejectReason.INVALID_EVENT, "id: required"),
    ({"id": 7}, RejectReason.INVALID_EVENT, "id: wrong type int"),
    ({"id": "0b0e6e2c-5b1c-4d8f-9c8e-8f2b5e2b1a1z"}, RejectReason.INVALID_EVENT,
     "id: must be a UUID"),
    ({"id": "0b0e6e2c-5b1c-4d8f-9c8e-8f2b5e2b1a1-"}, RejectReason.INVALID_EVENT,
     "id: must be a UUID"),
    ({"type": "dev.tollgate.other.v1"}, RejectReason.INVALID_EVENT,
     f"type: must be {USAGE_EVENT_TYPE}"),
    ({"tenant": "fr"}, RejectReason.WRONG_TENANT, "tenant: 'fr' is not 'de'"),
    ({"data": None}, RejectReason.INVALID_EVENT, "data: required"),
    ({"data": {"service": "fax"}}, RejectReason.INVALID_EVENT, "data.service: must be one of"),
    ({"data": {"service": ["data"]}}, RejectReason.INVALID_EVENT,
     "data.service: wrong type list"),
    ({"data": {"unit": "seconds"}}, RejectReason.INVALID_EVENT,
     "data.unit: data is measured in bytes"),
    ({"data": {"unit": {}}}, RejectReason.INVALID_EVENT, "data.unit: wrong type dict"),
    ({"data": {"quantity": 1.5}}, RejectReason.INVALID_EVENT, "data.quantity: wrong type float"),
    ({"data": {"quantity": True}}, RejectReason.INVALID_EVENT, "data.quantity: wrong type bool"),
    ({"data": {"quantity": -1}}, RejectReason.INVALID_EVENT, "data.quantity: must be between"),
    ({"data": {"quantity": 10**15 + 1}}, RejectReason.INVALID_EVENT,
     "data.quantity: must be between"),
    ({"data": {"subscriber": ""}}, RejectReason.INVALID_EVENT,
     "data.subscriber: 1 to 64 characters"),
    ({"data": {"subscriber": "4917\x00"}}, RejectReason.INVALID_EVENT,
     "data.subscriber: NUL character"),
    ({"data": {"startTime": "yesterday"}}, RejectReason.INVALID_EVENT,
     "data.startTime: not RFC 3339"),
    ({"data": {"startTime": "2026-11-23T10:00:00"}}, RejectReason.INVALID_EVENT,
     "data.startTime: needs a UTC offset"),
    ({"data": {"attributes": ["zone"]}}, RejectReason.INVALID_EVENT,
     "data.attributes: must be an object"),
])
def test_each_rule_refuses_with_its_reason_and_field(changes: dict[str, Any],
                                                     reason: RejectReason, detail: str) -> None:
    refused = refusal(json.dumps(envelope(**changes)).encode())
    assert refused.reason is reason
    assert refused.detail.startswith(detail), refused.detail


@pytest.mark.parametrize("raw", [
    b"{not json", b"", b"\xff\xfe{}",
    # a lone surrogate would fail the whole batch's statements in PostgreSQL
    b'{"id": "\\ud800"}',
    b'[1, 2]',
])
def test_what_is_not_a_json_object_is_malformed(raw: bytes) -> None:
    assert refusal(raw).reason is RejectReason.MALFORMED_JSON


def test_an_offset_other_than_utc_is_kept() -> None:
    event = parse_usage_event(json.dumps(envelope(
        data={"startTime": "2026-11-23T23:30:00-05:00"})).encode(), TENANT)
    assert event.start_time.utcoffset() == timedelta(hours=-5)
    assert event.start_time == datetime(2026, 11, 24, 4, 30, tzinfo=UTC)
