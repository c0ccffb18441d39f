"""Capture: the canonical form does not depend on session settings; billing documents are
audited on their immutable content; any table joins the trail with audit_register."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import asyncpg
import pytest

from tests.assurance.helpers import owner, populate, post_transfers
from tests.conftest import Servers
from tollgate_core.assurance.chain import AuditRecord, epoch_micros, genesis_hash, next_hash
from tollgate_core.assurance.chainer import chain_all
from tollgate_core.assurance.verify import BreakKind, verify_chain
from tollgate_core.domain.money import div_round_half_even
from tollgate_core.store import audit_repo
from tollgate_core.store.db import Pool, tenant_tx


def test_the_chain_record_is_stable() -> None:
    """A golden vector: changing the canonical form would orphan every stored chain."""
    record = AuditRecord("de", 1, "transfer", "00000000-0000-0000-0000-000000000001",
                         bytes(range(32)), datetime(2026, 11, 23, 10, 0, 0, 1, tzinfo=UTC))
    assert record.canonical() == (
        b'["de",1,"transfer","00000000-0000-0000-0000-000000000001",'
        b'"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",1795428000000001]')
    assert next_hash(genesis_hash("de"), record).hex() == (
        "c0080d491ab16b2814e9db50f7a97dad33fb415c36e9b1a1af0170d307dab73b")
    assert epoch_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    with pytest.raises(ValueError, match="offset"):
        epoch_micros(datetime(2026, 1, 1))  # noqa: DTZ001  (the point of the test)


async def test_digests_do_not_depend_on_the_session_time_zone(
        pool: Pool, tenant_name: str) -> None:
    await populate(pool, tenant_name, lines=1)
    async with tenant_tx(pool, tenant_name) as conn:
        await conn.execute("SET LOCAL TimeZone = 'Asia/Kathmandu'")
        await conn.execute("SET LOCAL bytea_output = 'escape'")
        await conn.execute(
            "INSERT INTO transfers (tenant_id, transfer_id, debit_account, credit_account,"
            " amount_micros, currency, code, cause_id) VALUES ($1, $2, 'funding:topups',"
            " 'revenue:usage', 5, 'EUR', 'usage', 'tz')", tenant_name, uuid.UUID(int=3))
    async with tenant_tx(pool, tenant_name) as conn:
        await conn.execute("SET LOCAL TimeZone = 'America/St_Johns'")
        kinds = await audit_repo.kinds(conn)
        captured = await conn.fetchval("SELECT digest FROM audit_events WHERE entity_id = $1",
                                       str(uuid.UUID(int=3)))
        now = await audit_repo.current_digests(conn, tenant_name, kinds["transfer"],
                                               [str(uuid.UUID(int=3))])
    assert now == {str(uuid.UUID(int=3)): bytes(captured)}


async def test_sql_half_even_matches_the_domain(pool: Pool) -> None:
    cases = [(a, d) for d in (1, 2, 10, 10_000, 1_000_000)
             for a in (-25_000, -15_000, -5_000, -1, 0, 1, 4_999, 5_000, 15_000, 25_000,
                       12_345_678, 125_000, 9_999_999_999)]
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT assurance_div_half_even(a, d) AS q FROM unnest($1::bigint[], $2::bigint[])"
            " WITH ORDINALITY AS k(a, d, n) ORDER BY n", [a for a, _ in cases],
            [d for _, d in cases])
    assert [r["q"] for r in rows] == [div_round_half_even(a, d) for a, d in cases]


async def test_billing_documents_are_audited_on_their_immutable_content(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    population = await populate(pool, tenant_name, lines=1)
    customer, invoice = population.customers[0], uuid.uuid4()
    async with tenant_tx(pool, tenant_name) as conn:
        await conn.execute(
            "INSERT INTO invoices (tenant_id, invoice_id, kind, series, number, bill_no,"
            " customer_id, period_start, period_end, bill_date, due_date, currency, net_micros,"
            " tax_micros, total_micros, state) VALUES ($1, $2, 'invoice', 'INV', 1, 'INV-1', $3,"
            " $4, $5, $5, $6, 'EUR', 10000000, 1900000, 11900000, 'issued')", tenant_name,
            invoice, customer, date(2026, 10, 1), date(2026, 11, 1), date(2026, 11, 15))
        await conn.execute(
            "INSERT INTO payments (tenant_id, payment_id, customer_id, amount_micros, currency,"
            " method) VALUES ($1, 'pay-1', $2, 5000000, 'EUR', 'sepa')", tenant_name, customer)
        await conn.execute(
            "INSERT INTO credit_notes (tenant_id, credit_note_id, series, number, bill_no,"
            " invoice_id, reason, net_micros, tax_micros) VALUES ($1, 'cn-1', 'CN', 1, 'CN-1',"
            " $2, 'goodwill', 1000000, 190000)", tenant_name, invoice)
        # settlement moves after issue: not part of what is audited
        await conn.execute("UPDATE invoices SET paid_micros = 5000000, state = 'partiallyPaid'"
                           " WHERE invoice_id = $1", invoice)
    await chain_all(pool, tenant_name)
    report = await verify_chain(pool, tenant_name)
    assert report.ok, report.first_break
    async with tenant_tx(pool, tenant_name) as conn:
        kinds = await conn.fetch("SELECT kind, entity_id, chain_seq FROM audit_events"
                                 " WHERE kind <> 'catalog_revision' ORDER BY chain_seq")
    assert [(r["kind"], r["entity_id"]) for r in kinds] == [
        ("invoice", str(invoice)), ("payment", "pay-1"), ("credit_note", "cn-1")]

    async with owner(servers.owner_dsn) as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # past 0002's guard
        await conn.execute("UPDATE payments SET amount_micros = 500000 WHERE tenant_id = $1",
                           tenant_name)
    broken = await verify_chain(pool, tenant_name)
    assert broken.first_break is not None
    assert (broken.first_break.kind, broken.first_break.sequence) == (
        BreakKind.RECORD_ALTERED, kinds[1]["chain_seq"])


async def test_a_table_joins_the_trail_with_one_line(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    table, kind = f"adjust_{tenant_name}", f"adjust_{tenant_name}"
    await populate(pool, tenant_name, lines=1)
    await post_transfers(pool, tenant_name, 2)
    async with owner(servers.owner_dsn) as conn:
        await conn.execute(
            f"CREATE TABLE {table} (tenant_id text NOT NULL, adjustment_id bigint NOT NULL,"
            f" amount_micros bigint NOT NULL, booked_at timestamptz NOT NULL DEFAULT now(),"
            f" proof bytea, note text, PRIMARY KEY (tenant_id, adjustment_id));"
            f" ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;"
            f" ALTER TABLE {table} FORCE ROW LEVEL SECURITY;"
            f" CREATE POLICY t ON {table} USING (tenant_id = current_setting('tollgate.tenant',"
            f" true));"
            f" GRANT SELECT, INSERT, UPDATE ON {table} TO tollgate_app;"
            f" INSERT INTO {table} VALUES ('{tenant_name}', 1, 100, now(), '\\x01', 'old')")
    try:
        async with owner(servers.owner_dsn) as conn:
            await conn.execute(f"SELECT audit_register('{table}', '{kind}', 'adjustment_id',"
                               " ARRAY['tenant_id', 'adjustment_id', 'amount_micros',"
                               " 'booked_at', 'proof'])")
            with pytest.raises(asyncpg.RaiseError, match="no exact canonical form"):
                await conn.execute("CREATE TEMP TABLE f (tenant_id text, id int NOT NULL,"
                                   " x float8); SELECT audit_register('f', 'f', 'id')")
        async with tenant_tx(pool, tenant_name) as conn:
            await conn.execute(f"INSERT INTO {table} (tenant_id, adjustment_id, amount_micros)"
                               " VALUES ($1, 2, 200), ($1, 3, 300)", tenant_name)
            await conn.execute(f"UPDATE {table} SET note = 'free text, not audited'")
        await chain_all(pool, tenant_name)
        report = await verify_chain(pool, tenant_name)
        assert report.ok, report.first_break
        assert report.verified == 1 + 2 + 3  # revision, transfers, adjustments (1 backfilled)
        async with tenant_tx(pool, tenant_name) as conn:
            await conn.execute(f"UPDATE {table} SET proof = '\\x02' WHERE adjustment_id = 1")
            backfilled = await conn.fetchval("SELECT chain_seq FROM audit_events"
                                             " WHERE kind = $1 AND entity_id = '1'", kind)
        report = await verify_chain(pool, tenant_name)
        assert report.first_break is not None
        assert (report.first_break.kind, report.first_break.sequence) == (
            BreakKind.RECORD_ALTERED, backfilled)
    finally:
        async with owner(servers.owner_dsn) as conn:
            await conn.execute(f"DROP TABLE {table}; DROP FUNCTION audit_capture_{kind}()")
            await conn.execute("DELETE FROM audit_kinds WHERE kind = $1", kind)
