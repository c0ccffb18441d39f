"""The audit trail in PostgreSQL: the unchained queue, the chain, its head and the registry of
audited tables (see migrations/0003_assurance.sql)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tollgate_core.store.db import Connection


@dataclass(frozen=True, slots=True)
class Head:
    sequence: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class PendingEvent:
    event_no: int
    kind: str
    entity_id: str
    digest: bytes
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ChainedEvent:
    sequence: int
    kind: str
    entity_id: str
    digest: bytes
    recorded_at: datetime
    hash: bytes


@dataclass(frozen=True, slots=True)
class AuditKind:
    kind: str
    table_name: str
    key_column: str
    key_type: str
    canonical: str


async def lock_head(conn: Connection, tenant: str, genesis: bytes) -> Head:
    """Create the head at genesis if missing and lock it (one chainer per tenant at a time)."""
    row = await conn.fetchrow(
        "INSERT INTO audit_heads (tenant_id, chain_seq, chain_hash) VALUES ($1, 0, $2)"
        " ON CONFLICT (tenant_id) DO UPDATE SET chain_seq = audit_heads.chain_seq"
        " RETURNING chain_seq, chain_hash", tenant, genesis)
    assert row is not None
    return Head(row["chain_seq"], bytes(row["chain_hash"]))


async def read_head(conn: Connection, tenant: str) -> Head | None:
    row = await conn.fetchrow("SELECT chain_seq, chain_hash FROM audit_heads"
                              " WHERE tenant_id = $1", tenant)
    return None if row is None else Head(row["chain_seq"], bytes(row["chain_hash"]))


async def unchained(conn: Connection, tenant: str, limit: int) -> list[PendingEvent]:
    """Committed events not chained yet, oldest insertion first."""
    rows = await conn.fetch(
        "SELECT event_no, kind, entity_id, digest, recorded_at FROM audit_events"
        " WHERE tenant_id = $1 AND chain_seq IS NULL ORDER BY event_no LIMIT $2", tenant, limit)
    return [PendingEvent(r["event_no"], r["kind"], r["entity_id"], bytes(r["digest"]),
                         r["recorded_at"]) for r in rows]


async def pending_count(conn: Connection, tenant: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND chain_seq IS NULL", tenant))


async def append(conn: Connection, tenant: str, event_nos: Sequence[int],
                 sequences: Sequence[int], hashes: Sequence[bytes], head: Head) -> None:
    """Give events their chain position and hash, and move the head."""
    status = await conn.execute(
        "UPDATE audit_events e SET chain_seq = k.s, chain_hash = k.h"
        " FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) AS k(n, s, h)"
        " WHERE e.tenant_id = $1 AND e.event_no = k.n AND e.chain_seq IS NULL",
        tenant, list(event_nos), list(sequences), list(hashes))
    assert status == f"UPDATE {len(event_nos)}", status
    await conn.execute(
        "UPDATE audit_heads SET chain_seq = $2, chain_hash = $3, updated_at = now()"
        " WHERE tenant_id = $1", tenant, head.sequence, head.hash)


async def chained_after(conn: Connection, tenant: str, after: int,
                        limit: int) -> list[ChainedEvent]:
    rows = await conn.fetch(
        "SELECT chain_seq, kind, entity_id, digest, recorded_at, chain_hash FROM audit_events"
        " WHERE tenant_id = $1 AND chain_seq > $2 ORDER BY chain_seq LIMIT $3",
        tenant, after, limit)
    return [ChainedEvent(r["chain_seq"], r["kind"], r["entity_id"], bytes(r["digest"]),
                         r["recorded_at"], bytes(r["chain_hash"])) for r in rows]


async def kinds(conn: Connection) -> dict[str, AuditKind]:
    rows = await conn.fetch(
        "SELECT kind, table_name, key_column, key_type, canonical FROM audit_kinds")
    return {r["kind"]: AuditKind(**dict(r)) for r in rows}


# Identifiers and types come from audit_kinds, written by audit_register (a migration); they
# are still checked before being put into SQL text.
_IDENT = re.compile(r'^("[^"]+"|[a-z_][a-z0-9_$]*)(\.("[^"]+"|[a-z_][a-z0-9_$]*))?$')
_TYPE = re.compile(r"^[a-z][a-z0-9_ ]*(\([0-9, ]+\))?$")


def _checked(kind: AuditKind) -> AuditKind:
    if not (_IDENT.match(kind.table_name) and _IDENT.match(kind.key_column)
            and _TYPE.match(kind.key_type)):
        raise ValueError(f"audit kind {kind.kind!r} has a malformed registration")
    return kind


async def current_digests(conn: Connection, tenant: str, kind: AuditKind,
                          entity_ids: Sequence[str]) -> dict[str, bytes]:
    """The digest of the canonical form of each audited row as it is now (absent: deleted)."""
    k = _checked(kind)
    rows = await conn.fetch(
        f"SELECT r.{k.key_column}::text AS entity_id,"
        f" sha256(convert_to({k.canonical}, 'UTF8')) AS digest FROM {k.table_name} r"
        f" WHERE r.tenant_id = $1 AND r.{k.key_column} = ANY(ARRAY(SELECT x::{k.key_type}"
        # an id that is no value of the key's type (a forged event) names no row
        f"  FROM unnest($2::text[]) AS x WHERE pg_input_is_valid(x, '{k.key_type}')))",
        tenant, list(entity_ids))
    return {r["entity_id"]: bytes(r["digest"]) for r in rows}


async def unaudited(conn: Connection, tenant: str, kind: AuditKind) -> tuple[int, str | None]:
    """Rows of an audited table that have no audit event: how many, and the first key."""
    k = _checked(kind)
    # EXCEPT is a hashed or sorted set difference: linear, whatever the statistics say (an
    # anti-join may be planned as a nested loop over audit_events, which has no index on
    # entity_id, to keep the capture to one index entry per row).
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, min(id) AS first FROM ("
        f" SELECT r.{k.key_column}::text AS id FROM {k.table_name} r WHERE r.tenant_id = $1"
        f" EXCEPT SELECT e.entity_id FROM audit_events e WHERE e.tenant_id = $1"
        f" AND e.kind = $2) AS missing", tenant, k.kind)
    assert row is not None
    return int(row["n"]), row["first"]
