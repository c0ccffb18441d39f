"""The audit chain's arithmetic (pure): hash_n = sha256(hash_{n-1} || canonical record n).

A record binds the tenant, its position in the chain, what was audited (kind and entity id),
the SHA-256 digest of the audited row's canonical form (computed by the capture trigger) and
when it was recorded. The chain of a tenant starts from a genesis hash derived from the tenant
id, so chains of different tenants cannot be spliced into each other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def genesis_hash(tenant: str) -> bytes:
    return hashlib.sha256(f"tollgate-audit-genesis/{tenant}".encode()).digest()


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch, exactly (no float on the way)."""
    if moment.tzinfo is None:
        raise ValueError("an audit timestamp must carry its offset")
    return (moment - _EPOCH) // _MICROSECOND


@dataclass(frozen=True, slots=True)
class AuditRecord:
    tenant: str
    sequence: int
    kind: str
    entity_id: str
    digest: bytes
    recorded_at: datetime

    def canonical(self) -> bytes:
        """Compact JSON array: fixed field order, no whitespace, UTF-8."""
        fields = [self.tenant, self.sequence, self.kind, self.entity_id, self.digest.hex(),
                  epoch_micros(self.recorded_at)]
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def next_hash(previous: bytes, record: AuditRecord) -> bytes:
    return hashlib.sha256(previous + record.canonical()).digest()
