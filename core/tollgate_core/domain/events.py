"""Domain event envelopes (CloudEvents-style) and the subjects they travel on."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SPEC_VERSION = "1.0"


def usage_subject(tenant: str, service: str) -> str:
    return f"tg.{tenant}.usage.{service}"


def event_subject(tenant: str, domain_event: str) -> str:
    """`domain_event` such as "balance.updated" → tg.<tenant>.evt.balance.updated."""
    return f"tg.{tenant}.evt.{domain_event}"


def dlq_subject(tenant: str, kind: str) -> str:
    return f"tg.{tenant}.dlq.{kind}"


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One event bound for the outbox: `type` is "balance.updated", "catalog.published", …"""

    id: uuid.UUID
    tenant: str
    type: str
    data: dict[str, Any]
    time: datetime

    @classmethod
    def new(cls, tenant: str, type_: str, data: dict[str, Any],
            event_id: uuid.UUID | None = None) -> DomainEvent:
        return cls(event_id or uuid.uuid4(), tenant, type_, data, datetime.now(UTC))

    @property
    def subject(self) -> str:
        return event_subject(self.tenant, self.type)

    def to_bytes(self, source: str = "tollgate") -> bytes:
        envelope = {
            "specversion": SPEC_VERSION,
            "id": str(self.id),
            "source": source,
            "type": f"dev.tollgate.{self.type}.v1",
            "time": self.time.isoformat(),
            "tenant": self.tenant,
            "data": self.data,
        }
        return json.dumps(envelope, separators=(",", ":")).encode()
