"""Invariant 6: the audit chain of money-moving records verifies from genesis, and any
tampering is reported as exactly the first break."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest

from tests.assurance.helpers import owner, post_transfers
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tests.running import eventually
from tollgate_core.assurance.chain import genesis_hash
from tollgate_core.assurance.chainer import chain_all, chain_forever, chain_once
from tollgate_core.assurance.verify import Anchor, BreakKind, verify_chain
from tollgate_core.store import audit_repo
from tollgate_core.store.db import Pool, tenant_tx


async def sequence_of(pool: Pool, tenant: str, kind: str, entity_id: str) -> int:
    async with tenant_tx(pool, tenant) as conn:
        value = await conn.fetchval("SELECT chain_seq FROM audit_events WHERE kind = $1"
                                    " AND entity_id = $2", kind, entity_id)
    assert isinstance(value, int)
    return value


async def chained_tenant(pool: Pool, tenant: str, transfers: int = 1_200) -> list[uuid.UUID]:
    await install_example_catalog(pool, tenant)
    ids = await post_transfers(pool, tenant, transfers)
    await chain_all(pool, tenant, batch_max=500)
    return ids


async def test_transfers_and_catalog_revisions_are_chained_and_verify(
        pool: Pool, tenant_name: str) -> None:
    ids = await chained_tenant(pool, tenant_name)
    report = await verify_chain(pool, tenant_name, chunk=700)
    assert report.ok, report.first_break
    assert report.verified == len(ids) + 1  # the catalog revision, then the transfers
    assert report.head_sequence == report.verified and report.pending == 0
    async with tenant_tx(pool, tenant_name) as conn:
        kinds = await conn.fetch("SELECT kind, count(*) AS n FROM audit_events"
                                 " GROUP BY kind ORDER BY kind")
        first = await conn.fetchrow("SELECT kind, entity_id FROM audit_events"
                                    " WHERE chain_seq = 1")
    assert [(r["kind"], r["n"]) for r in kinds] == [("catalog_revision", 1),
                                                    ("transfer", len(ids))]
    assert first is not None and (first["kind"], first["entity_id"]) == ("catalog_revision", "1")


async def test_a_repeated_transfer_is_not_audited_twice(pool: Pool, tenant_name: str) -> None:
    ids = await chained_tenant(pool, tenant_name, transfers=10)
    assert await post_transfers(pool, tenant_name, 10) == ids  # same ids: ON CONFLICT DO NOTHING
    assert (await chain_all(pool, tenant_name)).chained == 0
    report = await verify_chain(pool, tenant_name)
    assert report.ok and report.verified == 11


async def test_a_tampered_transfer_amount_is_the_first_break(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    ids = await chained_tenant(pool, tenant_name)
    victim, later = ids[600], ids[1_100]  # different batches: victim is captured first
    async with owner(servers.owner_dsn) as conn:
        for tid in (later, victim):
            await conn.execute("UPDATE transfers SET amount_micros = amount_micros + 1"
                               " WHERE tenant_id = $1 AND transfer_id = $2", tenant_name, tid)
    report = await verify_chain(pool, tenant_name)
    sequence = await sequence_of(pool, tenant_name, "transfer", str(victim))
    assert report.first_break is not None
    assert report.first_break.kind is BreakKind.RECORD_ALTERED
    assert report.first_break.sequence == sequence
    assert report.verified == sequence - 1
    assert report.first_break.expected != report.first_break.found
    assert str(victim) in report.first_break.detail


async def test_a_deleted_transfer_is_the_first_break(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    ids = await chained_tenant(pool, tenant_name, transfers=50)
    async with owner(servers.owner_dsn) as conn:
        await conn.execute("DELETE FROM transfers WHERE tenant_id = $1 AND transfer_id = $2",
                           tenant_name, ids[20])
    report = await verify_chain(pool, tenant_name)
    assert report.first_break is not None
    assert report.first_break.kind is BreakKind.RECORD_MISSING
    assert report.first_break.sequence == await sequence_of(pool, tenant_name, "transfer",
                                                            str(ids[20]))


async def test_a_deleted_audit_event_is_the_first_break(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await chained_tenant(pool, tenant_name)
    async with owner(servers.owner_dsn) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM audit_events WHERE tenant_id = $1"
                               " AND chain_seq = 501", tenant_name)
        # an attacker with superuser rights can switch the guard trigger off
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("DELETE FROM audit_events WHERE tenant_id = $1"
                               " AND chain_seq IN (501, 800)", tenant_name)
    report = await verify_chain(pool, tenant_name)
    assert report.first_break is not None
    assert report.first_break.kind is BreakKind.MISSING_SEQUENCE
    assert report.first_break.sequence == 501
    assert (report.first_break.expected, report.first_break.found) == ("sequence 501",
                                                                       "sequence 502")
    assert report.verified == 500


async def test_reordered_audit_events_are_the_first_break(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await chained_tenant(pool, tenant_name)
    async with owner(servers.owner_dsn) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        # swap positions 300 and 301 (through a free position: the index is unique)
        for old, new in ((300, 1_000_000), (301, 300), (1_000_000, 301)):
            await conn.execute("UPDATE audit_events SET chain_seq = $3 WHERE tenant_id = $1"
                               " AND chain_seq = $2", tenant_name, old, new)
        stored = await conn.fetchval("SELECT chain_hash FROM audit_events WHERE tenant_id = $1"
                                     " AND chain_seq = 300", tenant_name)
    report = await verify_chain(pool, tenant_name)
    assert report.first_break is not None
    assert report.first_break.kind is BreakKind.HASH_MISMATCH
    assert report.first_break.sequence == 300
    assert report.first_break.found == bytes(stored).hex()
    assert report.first_break.expected != report.first_break.found


async def test_an_altered_audit_digest_is_the_first_break(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Rewriting both the money record and its captured digest still breaks the chain."""
    ids = await chained_tenant(pool, tenant_name, transfers=100)
    sequence = await sequence_of(pool, tenant_name, "transfer", str(ids[42]))
    async with owner(servers.owner_dsn) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("UPDATE transfers SET amount_micros = 1 WHERE tenant_id = $1"
                           " AND transfer_id = $2", tenant_name, ids[42])
        await conn.execute("UPDATE audit_events SET digest = sha256('forged'::bytea)"
                           " WHERE tenant_id = $1 AND chain_seq = $2", tenant_name, sequence)
    report = await verify_chain(pool, tenant_name)
    assert report.first_break is not None
    assert (report.first_break.kind, report.first_break.sequence) == (BreakKind.HASH_MISMATCH,
                                                                      sequence)


async def test_a_transfer_written_without_capture_is_reported(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await chained_tenant(pool, tenant_name, transfers=10)
    async with owner(servers.owner_dsn) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "INSERT INTO transfers (tenant_id, transfer_id, debit_account, credit_account,"
            " amount_micros, currency, code, cause_id) VALUES ($1, $2, 'funding:topups',"
            " 'revenue:usage', 5, 'EUR', 'usage', 'sneaky')", tenant_name, uuid.UUID(int=7))
    report = await verify_chain(pool, tenant_name)
    assert report.first_break is not None
    assert report.first_break.kind is BreakKind.UNAUDITED
    assert str(uuid.UUID(int=7)) in report.first_break.expected
    assert report.verified == 11


async def test_the_head_and_anchors_catch_a_truncated_tail(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await chained_tenant(pool, tenant_name, transfers=30)
    # the chainer published its head through the outbox: that is the anchor kept outside
    async with tenant_tx(pool, tenant_name) as conn:
        payloads = await conn.fetch("SELECT payload FROM outbox WHERE subject = $1"
                                    " ORDER BY created_at", f"tg.{tenant_name}.evt.audit.chained")
    rounds = [json.loads(p["payload"])["data"] for p in payloads]
    assert [(r["fromSequence"], r["toSequence"]) for r in rounds] == [(1, 31)]
    anchor = Anchor(31, bytes.fromhex(rounds[0]["headHash"]))
    report = await verify_chain(pool, tenant_name, anchor=anchor)
    assert report.ok and report.head_hash == anchor.hash
    async with owner(servers.owner_dsn) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("DELETE FROM audit_events WHERE tenant_id = $1 AND chain_seq > 25",
                           tenant_name)
    truncated = await verify_chain(pool, tenant_name)
    assert truncated.first_break is not None
    assert (truncated.first_break.kind, truncated.first_break.sequence) == (
        BreakKind.MISSING_SEQUENCE, 26)
    # an attacker who also rewinds the head is caught by the anchor kept outside
    async with owner(servers.owner_dsn) as conn:
        last = await conn.fetchval("SELECT chain_hash FROM audit_events WHERE tenant_id = $1"
                                   " AND chain_seq = 25", tenant_name)
        await conn.execute("UPDATE audit_heads SET chain_seq = 25, chain_hash = $2"
                           " WHERE tenant_id = $1", tenant_name, last)
    rewound = await verify_chain(pool, tenant_name, anchor=anchor)
    assert rewound.first_break is not None
    assert (rewound.first_break.kind, rewound.first_break.sequence) == (
        BreakKind.ANCHOR_MISMATCH, 31)


async def test_a_late_committing_writer_is_chained_not_skipped(
        pool: Pool, tenant_name: str) -> None:
    await chained_tenant(pool, tenant_name, transfers=5)
    async with tenant_tx(pool, tenant_name) as slow:
        # the slow writer takes lower event numbers first and commits last
        await slow.execute(
            "INSERT INTO transfers (tenant_id, transfer_id, debit_account, credit_account,"
            " amount_micros, currency, code, cause_id) VALUES ($1, $2, 'funding:topups',"
            " 'revenue:usage', 5, 'EUR', 'usage', 'slow')", tenant_name, uuid.UUID(int=1))
        fast_ids = await post_transfers(pool, tenant_name, 3, start=100)
        round_ = await chain_all(pool, tenant_name)
        assert round_.chained == 3
        async with tenant_tx(pool, tenant_name) as conn:
            waiting = await conn.fetchval("SELECT count(*) FROM audit_events"
                                          " WHERE chain_seq IS NULL")
        assert waiting == 0  # the slow writer's event is invisible, not skipped over
    assert (await chain_all(pool, tenant_name)).chained == 1
    report = await verify_chain(pool, tenant_name)
    assert report.ok and report.verified == 1 + 5 + 3 + 1
    assert await sequence_of(pool, tenant_name, "transfer", str(uuid.UUID(int=1))) == 10
    assert {await sequence_of(pool, tenant_name, "transfer", str(t)) for t in fast_ids} == {
        7, 8, 9}


async def test_concurrent_chainers_and_writers_keep_one_chain(
        pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    writers = [post_transfers(pool, tenant_name, 300, start=w * 1_000, batch=50)
               for w in range(4)]
    chainers = [chain_once(pool, tenant_name, batch_max=100) for _ in range(20)]
    await asyncio.gather(*writers, *chainers)
    await chain_all(pool, tenant_name)
    report = await verify_chain(pool, tenant_name)
    assert report.ok, report.first_break
    assert report.verified == 1 + 4 * 300


async def test_the_application_role_cannot_forge_or_erase_audit_events(
        pool: Pool, tenant_name: str) -> None:
    await chained_tenant(pool, tenant_name, transfers=3)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with tenant_tx(pool, tenant_name) as conn:
            await conn.execute("INSERT INTO audit_events (tenant_id, kind, entity_id, digest)"
                               " VALUES ($1, 'transfer', 'x', sha256('x'))", tenant_name)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with tenant_tx(pool, tenant_name) as conn:
            await conn.execute("DELETE FROM audit_events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with tenant_tx(pool, tenant_name) as conn:
            await conn.execute("UPDATE audit_events SET digest = sha256('x')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        async with tenant_tx(pool, tenant_name) as conn:  # chained rows are final
            await conn.execute("UPDATE audit_events SET chain_hash = sha256('x')"
                               " WHERE chain_seq = 2")
    assert (await verify_chain(pool, tenant_name)).ok


async def test_tenants_have_separate_chains(pool: Pool, tenant_name: str) -> None:
    other = tenant_name + "b"
    await chained_tenant(pool, tenant_name, transfers=4)
    await chained_tenant(pool, other, transfers=6)
    async with tenant_tx(pool, tenant_name) as conn:
        seen = await conn.fetchval("SELECT count(*) FROM audit_events")
        head = await audit_repo.read_head(conn, tenant_name)
    assert seen == 5
    assert head is not None and head.sequence == 5
    mine, theirs = (await verify_chain(pool, tenant_name)), (await verify_chain(pool, other))
    assert mine.ok and theirs.ok and (mine.verified, theirs.verified) == (5, 7)
    assert genesis_hash(tenant_name) != genesis_hash(other)


async def test_the_background_chainer_keeps_up_and_stops(pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    stop = asyncio.Event()
    task = asyncio.create_task(chain_forever(pool, tenant_name, stop, interval_s=0.05))
    await post_transfers(pool, tenant_name, 120, batch=40)

    async def all_chained() -> bool:
        async with tenant_tx(pool, tenant_name) as conn:
            head = await audit_repo.read_head(conn, tenant_name)
        return head is not None and head.sequence == 121

    await eventually(all_chained)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert (await verify_chain(pool, tenant_name, chunk=50)).ok


async def test_a_forged_event_is_reported_not_a_crash(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Forged before chaining, its hash is valid; it names no money record."""
    await chained_tenant(pool, tenant_name, transfers=3)
    async with owner(servers.owner_dsn) as conn:
        await conn.execute("INSERT INTO audit_events (tenant_id, kind, entity_id, digest)"
                           " VALUES ($1, 'transfer', 'not-a-uuid', sha256('x'::bytea))",
                           tenant_name)
    await chain_all(pool, tenant_name)
    report = await verify_chain(pool, tenant_name)
    assert report.first_break is not None
    assert (report.first_break.kind, report.first_break.sequence) == (BreakKind.RECORD_MISSING,
                                                                      5)
