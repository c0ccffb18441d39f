"""`tollgate audit verify|chain` and `tollgate assurance gen-legacy|reconcile`, invoked as a user
would (typer's runner, in a thread: each command runs its own event loop)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from typer.testing import CliRunner, Result

from tests.assurance.helpers import copy_rated_usage, owner, populate, post_transfers
from tests.conftest import Servers
from tollgate_cli.main import app
from tollgate_core.assurance.legacy_gen import read_faults
from tollgate_core.store.db import Pool, tenant_tx


async def tollgate(servers: Servers, *args: str) -> Result:
    def invoke() -> Result:
        return CliRunner().invoke(app, list(args), env={
            "TOLLGATE_DATABASE_URL": servers.app_dsn, "TOLLGATE_NATS_URL": servers.nats_url})

    return await asyncio.to_thread(invoke)


async def test_audit_verify_reports_ok_then_the_first_break(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await populate(pool, tenant_name, lines=1)
    ids = await post_transfers(pool, tenant_name, 40)
    ok = await tollgate(servers, "audit", "verify", "--tenant", tenant_name)
    assert ok.exit_code == 0, ok.output
    assert "OK: 41 audit events verified from genesis" in ok.stdout
    head = ok.stdout.split("head ")[1].split()[0].rstrip(";")
    assert (await tollgate(servers, "audit", "verify", "--tenant", tenant_name, "--anchor",
                           head)).exit_code == 0

    async with owner(servers.owner_dsn) as conn:
        await conn.execute("UPDATE transfers SET amount_micros = 1 WHERE tenant_id = $1"
                           " AND transfer_id = $2", tenant_name, ids[17])
    async with tenant_tx(pool, tenant_name) as conn:
        sequence = await conn.fetchval("SELECT chain_seq FROM audit_events WHERE entity_id = $1",
                                       str(ids[17]))
    broken = await tollgate(servers, "audit", "verify", "--tenant", tenant_name)
    assert broken.exit_code == 1, broken.output
    assert f"BREAK at sequence {sequence}: recordAltered: expected " in broken.stdout
    assert f"transfer {ids[17]}" in broken.stdout
    assert f"{sequence - 1} audit events verified before the break" in broken.stdout

    bad_anchor = await tollgate(servers, "audit", "verify", "--tenant", tenant_name,
                                "--anchor", "3:nothex")
    assert bad_anchor.exit_code == 2


async def test_audit_chain_then_verify_without_chaining(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await populate(pool, tenant_name, lines=1)
    await post_transfers(pool, tenant_name, 5)
    chained = await tollgate(servers, "audit", "chain", "--tenant", tenant_name)
    assert chained.exit_code == 0 and "chained 6 audit events" in chained.stdout
    await post_transfers(pool, tenant_name, 2, start=50)
    verified = await tollgate(servers, "audit", "verify", "--tenant", tenant_name, "--no-chain")
    assert verified.exit_code == 0
    assert "OK: 6 audit events verified" in verified.stdout
    assert "2 not chained yet" in verified.stdout


async def test_generate_a_legacy_extract_and_reconcile_it(
        pool: Pool, servers: Servers, tenant_name: str, tmp_path: Path) -> None:
    population = await populate(pool, tenant_name, lines=50)
    start = datetime(2026, 11, 20, tzinfo=ZoneInfo("Europe/Berlin"))
    await copy_rated_usage(pool, tenant_name, population, 2_000, start, timedelta(days=1),
                           seed=3)
    generated = await tollgate(
        servers, "assurance", "gen-legacy", "--tenant", tenant_name, "--since", "2026-11-20",
        "--until", "2026-11-21", "--out", str(tmp_path), "--seed", "7", "--unit", "minor",
        "--missing-rate", "0.02", "--duplicate-rate", "0.01", "--off-by-one-rate", "0.01",
        "--extra-rate", "0.005", "--no-event-id-rate", "0.1")
    assert generated.exit_code == 0, generated.output
    assert "1990 legacy records" in generated.stdout  # 2000 - 40 missing + 20 copies + 10 extra
    faults = read_faults(tmp_path / "injected-faults.csv")
    record_faults = [f for f in faults if not f.kind.startswith("TOTAL_")]
    assert len(record_faults) == 40 + 20 + 20 + 10

    reconciled = await tollgate(
        servers, "assurance", "reconcile", "--tenant", tenant_name,
        str(tmp_path / "legacy-records.csv"), "--totals", str(tmp_path / "legacy-totals.csv"),
        "--fail-on-variance")
    assert reconciled.exit_code == 3, reconciled.output
    lines = {line.strip("│ ").split("│")[0].strip(): line.split("│")[-2].strip()
             for line in reconciled.stdout.splitlines() if line.count("│") >= 3}
    assert lines["legacy records"] == "1990"
    assert lines["Tollgate records in the period"] == "2000"
    assert lines["matched"] == "1960"
    assert lines["MISSING_IN_LEGACY"] == "40"
    assert lines["DUPLICATE_IN_LEGACY"] == "20"
    assert lines["AMOUNT_DIFFERS"] == "20"
    assert lines["MISSING_IN_TOLLGATE"] == "10"
    assert lines["variances"] == str(len(faults))

    missing_file = await tollgate(servers, "assurance", "reconcile", "--tenant", tenant_name,
                                  str(tmp_path / "nope.csv"))
    assert missing_file.exit_code == 2
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("legacy_record_id,event_id,amount_micros\nx,y,1\n")
    refused = await tollgate(servers, "assurance", "reconcile", "--tenant", tenant_name,
                             str(malformed))
    assert refused.exit_code == 2
    assert "missing column(s)" in refused.stderr
