"""`tollgate audit verify`: recompute a tenant's audit chain from genesis and find the first break.

Checked, in chain order, for every event n: its position is n (nothing deleted or moved), its
hash is sha256(hash_{n-1} || record n) (nothing altered or reordered), and the audited row still
exists and still has the digest captured when it was written (the money record itself was not
changed). Then: the chain ends at the head, at the anchor if one is given, and every row of
every audited table has an audit event (nothing was written with the capture disabled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from tollgate_core.assurance.chain import AuditRecord, genesis_hash, next_hash
from tollgate_core.store import audit_repo
from tollgate_core.store.db import Pool, tenant_tx

VERIFY_CHUNK = 5_000

Progress = Callable[[int, int], None]
"""Called with (events verified, events in the chain)."""


class BreakKind(StrEnum):
    MISSING_SEQUENCE = "missingSequence"  # a position is absent: an event deleted or moved
    HASH_MISMATCH = "hashMismatch"  # an event altered, or events reordered
    RECORD_ALTERED = "recordAltered"  # the audited row differs from what was captured
    RECORD_MISSING = "recordMissing"  # the audited row is gone
    UNKNOWN_KIND = "unknownKind"  # an event of a kind no table is registered for
    HEAD_MISMATCH = "headMismatch"  # the chain does not end where its head says
    ANCHOR_MISMATCH = "anchorMismatch"  # the chain differs from an externally kept hash
    UNAUDITED = "unaudited"  # a row of an audited table has no audit event


@dataclass(frozen=True, slots=True)
class ChainBreak:
    kind: BreakKind
    sequence: int | None
    expected: str
    found: str
    detail: str = ""

    def describe(self) -> str:
        where = f"sequence {self.sequence}" if self.sequence is not None else "completeness"
        text = f"{where}: {self.kind.value}: expected {self.expected}, found {self.found}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True, slots=True)
class VerifyReport:
    tenant: str
    verified: int
    head_sequence: int
    head_hash: bytes
    pending: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


@dataclass(frozen=True, slots=True)
class Anchor:
    """A (sequence, hash) pair kept outside the database, e.g. from an `audit.chained` event."""

    sequence: int
    hash: bytes

    @classmethod
    def parse(cls, text: str) -> Anchor:
        sequence, _, digest = text.partition(":")
        value = bytes.fromhex(digest)
        if len(value) != 32 or int(sequence) < 1:
            raise ValueError("an anchor is SEQUENCE:HASH with a 64-digit hex SHA-256")
        return cls(int(sequence), value)


async def verify_chain(pool: Pool, tenant: str, *, anchor: Anchor | None = None,
                       progress: Progress | None = None,
                       chunk: int = VERIFY_CHUNK) -> VerifyReport:
    # One snapshot for the whole walk: the chainer may append meanwhile, it changes nothing here.
    async with tenant_tx(pool, tenant, isolation="repeatable_read", readonly=True) as conn:
        genesis = genesis_hash(tenant)
        head = (await audit_repo.read_head(conn, tenant)
                or audit_repo.Head(0, genesis))
        pending = await audit_repo.pending_count(conn, tenant)
        kinds = await audit_repo.kinds(conn)
        verified, previous = 0, genesis

        def report(found: ChainBreak | None) -> VerifyReport:
            return VerifyReport(tenant, verified, head.sequence, head.hash, pending, found)

        if progress:
            progress(0, head.sequence)
        after = 0
        while events := await audit_repo.chained_after(conn, tenant, after, chunk):
            after = events[-1].sequence
            wanted: dict[str, list[str]] = {}
            for e in events:
                wanted.setdefault(e.kind, []).append(e.entity_id)
            current = {kind: await audit_repo.current_digests(conn, tenant, kinds[kind], ids)
                       for kind, ids in wanted.items() if kind in kinds}
            for e in events:
                expected_sequence = verified + 1
                if e.sequence != expected_sequence:
                    return report(ChainBreak(BreakKind.MISSING_SEQUENCE, expected_sequence,
                                             f"sequence {expected_sequence}",
                                             f"sequence {e.sequence}"))
                record = AuditRecord(tenant, e.sequence, e.kind, e.entity_id, e.digest,
                                     e.recorded_at)
                recomputed = next_hash(previous, record)
                if recomputed != e.hash:
                    return report(ChainBreak(BreakKind.HASH_MISMATCH, e.sequence,
                                             recomputed.hex(), e.hash.hex(),
                                             f"{e.kind} {e.entity_id}"))
                if e.kind not in kinds:
                    return report(ChainBreak(BreakKind.UNKNOWN_KIND, e.sequence,
                                             "a registered kind", e.kind, e.entity_id))
                now = current[e.kind].get(e.entity_id)
                if now is None:
                    return report(ChainBreak(BreakKind.RECORD_MISSING, e.sequence,
                                             e.digest.hex(), "no row",
                                             f"{e.kind} {e.entity_id}"))
                if now != e.digest:
                    return report(ChainBreak(BreakKind.RECORD_ALTERED, e.sequence,
                                             e.digest.hex(), now.hex(),
                                             f"{e.kind} {e.entity_id}"))
                if anchor is not None and anchor.sequence == e.sequence \
                        and anchor.hash != e.hash:
                    return report(ChainBreak(BreakKind.ANCHOR_MISMATCH, e.sequence,
                                             anchor.hash.hex(), e.hash.hex()))
                previous = e.hash
                verified = e.sequence
            if progress:
                progress(verified, head.sequence)

        if verified < head.sequence:
            return report(ChainBreak(BreakKind.MISSING_SEQUENCE, verified + 1,
                                     f"sequence {verified + 1}", "end of chain",
                                     f"the head is at {head.sequence}"))
        if (verified, previous) != (head.sequence, head.hash):
            return report(ChainBreak(BreakKind.HEAD_MISMATCH, head.sequence,
                                     f"{head.sequence}:{head.hash.hex()}",
                                     f"{verified}:{previous.hex()}"))
        if anchor is not None and anchor.sequence > verified:
            return report(ChainBreak(BreakKind.ANCHOR_MISMATCH, anchor.sequence,
                                     f"sequence {anchor.sequence}", f"chain ends at {verified}"))
        for kind in sorted(kinds.values(), key=lambda k: k.kind):
            missing, first = await audit_repo.unaudited(conn, tenant, kind)
            if missing:
                return report(ChainBreak(BreakKind.UNAUDITED, None,
                                         f"an audit event for {kind.kind} {first}", "none",
                                         f"{missing} {kind.table_name} row(s) unaudited"))
        return report(None)
