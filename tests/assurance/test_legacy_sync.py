"""`tollgate assurance sync` as the Tenant's CronJob runs it, against real PostgreSQL and NATS:
mirror batches written once each and resumable, extracts in inbox/ reconciled once each."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from typer.testing import Result

from tests.assurance.helpers import Population, copy_rated_usage, owner, populate
from tests.assurance.test_assurance_cli import tollgate
from tests.conftest import Servers
from tollgate_core.assurance.legacy_feed import AmountUnit, to_unit
from tollgate_core.assurance.legacy_gen import InjectedFault, read_faults
from tollgate_core.assurance.legacy_sync import sha256_of
from tollgate_core.store.db import Pool, tenant_tx

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 11, 20, tzinfo=BERLIN)
MINOR = AmountUnit.MINOR


async def sync(servers: Servers, tenant: str, folder: Path, *args: str) -> Result:
    return await tollgate(servers, "assurance", "sync", "--tenant", tenant, "--dir", str(folder),
                          "--settle-seconds", "0", *args)


async def issue_documents(pool: Pool, tenant: str, population: Population) -> None:
    """An invoice per postpaid account and a prepaid statement, as a bill run stores them (the
    bill run itself is tested in tests/billing; here only the rows matter)."""
    async with tenant_tx(pool, tenant) as conn:
        await conn.execute(
            "INSERT INTO invoices (tenant_id, invoice_id, kind, series, number, bill_no,"
            " customer_id, period_start, period_end, bill_date, due_date, currency, net_micros,"
            " tax_micros, total_micros, state) SELECT $1, gen_random_uuid(),"
            " CASE WHEN n = 1 THEN 'statement' ELSE 'invoice' END, 'INV', n, 'INV-' || n, c,"
            " '2026-11-01', '2026-12-01', '2026-12-01', '2026-12-15', 'EUR', n * 1000000,"
            " n * 190000, n * 1190000, 'issued' FROM unnest($2::uuid[]) WITH ORDINALITY AS k(c, n)",
            tenant, population.customers)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


async def test_mirror_writes_each_record_once_in_resumable_batches(
        pool: Pool, servers: Servers, tenant_name: str, tmp_path: Path) -> None:
    population = await populate(pool, tenant_name, lines=20)
    await copy_rated_usage(pool, tenant_name, population, 2_000, START, timedelta(days=1),
                           seed=5)
    await issue_documents(pool, tenant_name, population)
    outbox = tmp_path / "outbox"

    first = await sync(servers, tenant_name, tmp_path, "--unit", "minor")
    assert first.exit_code == 0, first.output
    assert "mirror: batch 1: 2000 rated records" in first.stdout
    stem = f"{tenant_name}-00000001"
    assert sorted(p.name for p in outbox.iterdir()) == [
        f"{stem}-documents.csv", f"{stem}-manifest.json", f"{stem}-records.csv",
        f"{stem}-totals.csv"]
    records = read_csv(outbox / f"{stem}-records.csv")
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        rated = {str(r["event_id"]): r for r in await conn.fetch(
            "SELECT event_id, customer_id, amount_micros, quantity FROM rated_usage")}
        invoices = await conn.fetch("SELECT bill_no, total_micros FROM invoices")
    assert len(records) == len(rated) == 2_000
    assert {r["event_id"] for r in records} == set(rated)
    for r in records:  # the legacy-feed format, amounts in cents rounded half-even
        tollgate = rated[r["event_id"]]
        assert r["legacy_record_id"] == r["event_id"]
        assert r["account_id"] == str(tollgate["customer_id"])
        assert int(r["units"]) == tollgate["quantity"]
        assert int(r["amount_minor"]) == to_unit(tollgate["amount_micros"], MINOR, "EUR")
        assert datetime.fromisoformat(r["event_time"]).utcoffset() == timedelta(hours=1)
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        key = (r["account_id"], r["event_time"][:10])
        sums[key][0] += 1
        sums[key][1] += int(r["amount_minor"])
    totals = read_csv(outbox / f"{stem}-totals.csv")
    assert {(t["account_id"], t["day"]): [int(t["record_count"]), int(t["amount_minor"])]
            for t in totals} == dict(sums)
    documents = read_csv(outbox / f"{stem}-documents.csv")
    assert Counter(d["kind"] for d in documents) == {"statement": 1, "invoice": 19}
    assert sorted((d["number"], int(d["total_minor"]) * 10_000) for d in documents) == sorted(
        (i["bill_no"], i["total_micros"]) for i in invoices)
    manifest = json.loads((outbox / f"{stem}-manifest.json").read_text())
    assert manifest["batch"] == 1 and manifest["amountUnit"] == "minor"
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        name: sha256_of(outbox / name) for name in (f"{stem}-records.csv", f"{stem}-totals.csv",
                                                   f"{stem}-documents.csv")}
    assert not [p for p in outbox.iterdir() if p.name.startswith(".")]  # no temporary left

    # Nothing new: nothing written, nothing recorded.
    before = snapshot(outbox)
    again = await sync(servers, tenant_name, tmp_path, "--unit", "minor")
    assert again.exit_code == 0, again.output
    assert "mirror: nothing new since the last batch" in again.stdout
    assert snapshot(outbox) == before

    # New usage: the next batch holds exactly it.
    await copy_rated_usage(pool, tenant_name, population, 300, START, timedelta(days=1),
                           seed=6)
    second = await sync(servers, tenant_name, tmp_path)
    assert second.exit_code == 0, second.output
    assert "mirror: batch 2: 300 rated records" in second.stdout
    batch2 = read_csv(outbox / f"{tenant_name}-00000002-records.csv")
    assert "amount_micros" in batch2[0]
    assert not {r["event_id"] for r in batch2} & set(rated)
    written2 = snapshot(outbox)

    # A run that died after recording batch 2 and writing only its records file: the next
    # run writes batch 2 again, byte for byte, then carries on with what came since.
    async with owner(servers.owner_dsn) as conn:
        await conn.execute("UPDATE legacy_mirror_batches SET written_at = NULL, files = NULL"
                           " WHERE tenant_id = $1 AND batch_no = 2", tenant_name)
    for suffix in ("-totals.csv", "-documents.csv", "-manifest.json"):
        (outbox / f"{tenant_name}-00000002{suffix}").unlink()
    await copy_rated_usage(pool, tenant_name, population, 50, START, timedelta(days=1), seed=7)
    resumed = await sync(servers, tenant_name, tmp_path)
    assert resumed.exit_code == 0, resumed.output
    assert "mirror: batch 2 (resumed): 300 rated records" in resumed.stdout
    assert "mirror: batch 3: 50 rated records" in resumed.stdout
    after = snapshot(outbox)
    assert {name: after[name] for name in written2} == written2
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        batches = await conn.fetch("SELECT batch_no, records, invoices, files, written_at"
                                   " FROM legacy_mirror_batches ORDER BY batch_no")
    assert [(b["batch_no"], b["records"], b["invoices"]) for b in batches] == [
        (1, 2_000, 20), (2, 300, 0), (3, 50, 0)]
    assert all(b["written_at"] is not None for b in batches)
    assert batches[1]["files"][f"{tenant_name}-00000002-records.csv"] == sha256_of(
        outbox / f"{tenant_name}-00000002-records.csv")
    mirrored = [r["event_id"] for n in (1, 2, 3)
                for r in read_csv(outbox / f"{tenant_name}-{n:08d}-records.csv")]
    assert len(mirrored) == len(set(mirrored)) == 2_350  # each record exactly once


def _variance_key(v: dict[str, Any]) -> tuple[str, ...]:
    if v["kind"].startswith("TOTAL_"):
        return (v["kind"], v["accountId"] or "", v["day"] or "")
    return (v["kind"], v["eventId"] or "", v["legacyRecordId"] or "")


def _fault_key(f: InjectedFault) -> tuple[str, ...]:
    if f.kind.startswith("TOTAL_"):
        return (f.kind.value, f.account_id or "", f.day.isoformat() if f.day else "")
    return (f.kind.value, f.event_id or "", f.legacy_record_id or "")


async def test_extracts_in_the_inbox_are_reconciled_once_and_malformed_ones_set_aside(
        pool: Pool, servers: Servers, tenant_name: str, tmp_path: Path) -> None:
    population = await populate(pool, tenant_name, lines=50)
    await copy_rated_usage(pool, tenant_name, population, 2_000, START, timedelta(days=1),
                           seed=3)
    extract = tmp_path / "extract"
    generated = await tollgate(
        servers, "assurance", "gen-legacy", "--tenant", tenant_name, "--since", "2026-11-20",
        "--until", "2026-11-21", "--out", str(extract), "--seed", "7", "--unit", "minor",
        "--missing-rate", "0.02", "--duplicate-rate", "0.01", "--off-by-one-rate", "0.01",
        "--extra-rate", "0.005", "--no-event-id-rate", "0.1")
    assert generated.exit_code == 0, generated.output
    faults = read_faults(extract / "injected-faults.csv")

    share = tmp_path / "legacy"
    inbox = share / "inbox"
    inbox.mkdir(parents=True)
    shutil.copy(extract / "legacy-records.csv", inbox / "lgy-20261120-records.csv")
    shutil.copy(extract / "legacy-totals.csv", inbox / "lgy-20261120-totals.csv")
    (inbox / "broken.csv").write_text("legacy_record_id,event_id,amount_micros\nx,y,1\n")
    (inbox / ".uploading.csv").write_text("not yet\n")  # a gateway's temporary names
    (inbox / "lgy-20261121-records.csv.part").write_text("not yet\n")

    first = await sync(servers, tenant_name, share, "--reconcile")
    assert first.exit_code == 3, first.output  # an extract was refused; the others were done
    assert "mirror: batch 1: 2000 rated records" in first.stdout
    assert "refused broken.csv (now in inbox/failed/): broken.csv: missing column(s)" in (
        first.stdout)
    assert sorted(p.name for p in inbox.iterdir()) == [
        ".uploading.csv", "done", "failed", "lgy-20261121-records.csv.part"]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == [
        "lgy-20261120-records.csv", "lgy-20261120-totals.csv"]
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == [
        "broken.csv", "broken.csv.reason.txt"]
    assert "missing column(s)" in (inbox / "failed" / "broken.csv.reason.txt").read_text()

    sha = sha256_of(inbox / "done" / "lgy-20261120-records.csv")
    report = json.loads((share / "reports" / f"lgy-20261120-records-{sha[:12]}.json")
                        .read_text())
    assert report["status"] == "reconciled"
    assert (report["source"], report["totalsSource"], report["sha256"]) == (
        "lgy-20261120-records.csv", "lgy-20261120-totals.csv", sha)
    assert report["amountUnit"] == "minor"
    assert report["byKind"] == {k.value: n for k, n in Counter(f.kind for f in faults).items()}
    assert report["varianceCount"] == len(report["variances"]) == len(faults)
    assert not report["variancesTruncated"]
    assert {_variance_key(v) for v in report["variances"]} == {_fault_key(f) for f in faults}
    broken = sha256_of(inbox / "failed" / "broken.csv")
    refused = json.loads((share / "reports" / f"broken-{broken[:12]}.json").read_text())
    assert refused["status"] == "failed" and "missing column(s)" in refused["error"]

    # the run is stored, and its variances were published (TOLLGATE_NATS_URL is set)
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        runs = await conn.fetch("SELECT run_id, source_sha256 FROM reconciliation_runs")
        pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"
                                      " AND subject LIKE '%assurance%'")
        published = await conn.fetchval("SELECT count(*) FROM outbox WHERE subject LIKE"
                                        " '%evt.assurance.variance'")
    assert [(str(r["run_id"]), r["source_sha256"]) for r in runs] == [(report["runId"], sha)]
    assert (pending, published) == (0, len(faults))

    # Nothing new in the inbox: a clean run.
    clean = await sync(servers, tenant_name, share, "--reconcile")
    assert clean.exit_code == 0, clean.output
    assert "reconcile: no new extract in inbox/" in clean.stdout

    # The legacy side sends the same extract again: it is not reconciled twice.
    shutil.copy(extract / "legacy-records.csv", inbox / "lgy-20261120-records.csv")
    repeated = await sync(servers, tenant_name, share, "--reconcile")
    assert repeated.exit_code == 0, repeated.output
    assert "alreadyReconciled" in repeated.stdout
    assert (inbox / "done" / f"lgy-20261120-records-{sha[:12]}.csv").is_file()
    async with tenant_tx(pool, tenant_name, readonly=True) as conn:
        assert await conn.fetchval("SELECT count(*) FROM reconciliation_runs") == 1


async def test_a_record_still_being_written_waits_for_the_next_batch(
        pool: Pool, servers: Servers, tenant_name: str, tmp_path: Path) -> None:
    """A writer's transaction open during the sync: its record (stamped after it began, and
    committed after the sync read) is not lost: the batch ends before that transaction began,
    and the next batch holds the record."""
    population = await populate(pool, tenant_name, lines=3)
    await copy_rated_usage(pool, tenant_name, population, 100, START, timedelta(days=1), seed=8)
    async with tenant_tx(pool, tenant_name) as writer:
        late = await writer.fetchval(
            "INSERT INTO rated_usage (tenant_id, event_id, subscription_id, customer_id,"
            " service, quantity, allowance_units, chargeable_units, amount_micros, currency,"
            " price_name, catalog_revision, start_time) SELECT tenant_id, gen_random_uuid(),"
            " subscription_id, customer_id, service, quantity, allowance_units,"
            " chargeable_units, amount_micros, currency, price_name, catalog_revision,"
            " start_time FROM rated_usage LIMIT 1 RETURNING event_id")
        during = await sync(servers, tenant_name, tmp_path)
        assert during.exit_code == 0, during.output
        assert "mirror: batch 1: 100 rated records" in during.stdout
    after = await sync(servers, tenant_name, tmp_path)
    assert after.exit_code == 0, after.output
    assert "mirror: batch 2: 1 rated records" in after.stdout
    (record,) = read_csv(tmp_path / "outbox" / f"{tenant_name}-00000002-records.csv")
    assert record["event_id"] == str(late)
