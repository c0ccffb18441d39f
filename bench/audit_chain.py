"""What the audit trail costs on the money path, and how fast it chains and verifies.

Same run, same tenant, the ledger write path of the charging engine (rating_repo.post_transfers:
transfers + balance updates, batches of 500) three ways:
- baseline: no audit capture (the transfers trigger disabled);
- Tollgate: the capture trigger (append kind, id, digest; chaining happens later, elsewhere);
- alternative: chaining inside the trigger, under a per-tenant lock (the head row), in PL/pgSQL.
Each with one writer and with four concurrent writers. Then the offline rating path
(JetStream → rate → PostgreSQL → ack) with capture off and on, the chainer's and the verifier's
throughput.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import asyncpg

from bench.common import (
    Env,
    analyze,
    environment,
    example_tenant,
    publish_usage,
    record,
    subscribers,
)
from bench.offline_rating import rated_rate
from tollgate_core.assurance.chainer import chain_all
from tollgate_core.assurance.verify import verify_chain
from tollgate_core.domain.ledger import Transfer, TransferCode, transfer_id
from tollgate_core.store import rating_repo
from tollgate_core.store.db import tenant_tx

TENANT = "bench"
ROWS = 60_000
BATCH = 500
ACCOUNTS = 1_000
WRITERS = 4
ROUNDS = 3
RATED_EVENTS = 20_000
LINES = 500
QUANTITY = 1_000_000_000

INLINE_SQL = """
CREATE TABLE audit_inline (tenant_id text NOT NULL, chain_seq bigint NOT NULL,
    kind text NOT NULL, entity_id text NOT NULL, digest bytea NOT NULL,
    chain_hash bytea NOT NULL, PRIMARY KEY (tenant_id, chain_seq));
CREATE TABLE audit_inline_heads (tenant_id text PRIMARY KEY, chain_seq bigint NOT NULL,
    chain_hash bytea NOT NULL);
INSERT INTO audit_inline_heads VALUES ('{tenant}', 0, sha256('genesis'::bytea));
CREATE FUNCTION audit_inline_transfer() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $f$
DECLARE
    seq bigint; prev bytea; r record;
    ids text[] := '{{}}'; digests bytea[] := '{{}}';
    seqs bigint[] := '{{}}'; hashes bytea[] := '{{}}';
    t text := current_setting('tollgate.tenant');
BEGIN
    SELECT chain_seq, chain_hash INTO seq, prev FROM audit_inline_heads WHERE tenant_id = t
        FOR UPDATE;
    FOR r IN SELECT n.transfer_id::text AS id, sha256(convert_to({canonical}, 'UTF8')) AS d
             FROM new_rows n ORDER BY n.transfer_id LOOP
        seq := seq + 1;
        prev := sha256(prev || convert_to(
            format('[%s,%s,"transfer",%s,%s]', t, seq, r.id, encode(r.d, 'hex')), 'UTF8'));
        ids := ids || r.id; digests := digests || r.d; seqs := seqs || seq;
        hashes := hashes || prev;
    END LOOP;
    INSERT INTO audit_inline SELECT t, s, 'transfer', i, d, h
        FROM unnest(seqs, ids, digests, hashes) AS k(s, i, d, h);
    UPDATE audit_inline_heads SET chain_seq = seq, chain_hash = prev WHERE tenant_id = t;
    RETURN NULL;
END
$f$;
CREATE TRIGGER audit_inline AFTER INSERT ON transfers REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit_inline_transfer();
ALTER TABLE transfers DISABLE TRIGGER audit_inline;
"""

MODES = {  # mode → (capture trigger, inline-chain trigger)
    "baseline": (False, False),
    "capture": (True, False),
    "inline": (False, True),
}


async def set_mode(owner: asyncpg.Connection, mode: str) -> None:
    capture, inline = MODES[mode]
    await owner.execute(
        f"ALTER TABLE transfers {'ENABLE' if capture else 'DISABLE'} TRIGGER audit_transfer;"
        f" ALTER TABLE transfers {'ENABLE' if inline else 'DISABLE'} TRIGGER audit_inline")


async def setup_accounts(env: Env) -> list[str]:
    accounts = [f"customer:{uuid.UUID(int=i)}" for i in range(ACCOUNTS)]
    async with tenant_tx(env.pool, TENANT) as conn:
        await conn.executemany(
            "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
            " VALUES ($1, $2, 'customer', 'EUR')", [(TENANT, a) for a in accounts])
    return accounts


def transfers(accounts: list[str], run: str, start: int, count: int) -> list[Transfer]:
    return [Transfer(transfer_id(f"{run}-{i}", "charge"), accounts[i % ACCOUNTS],
                     "revenue:usage", 1_000 + i % 997, "EUR", TransferCode.USAGE, f"{run}-{i}")
            for i in range(start, start + count)]


async def write(env: Env, accounts: list[str], run: str, writers: int) -> float:
    """ROWS transfers in batches, spread over `writers` concurrent writers; rows/s."""
    batches = list(range(0, ROWS, BATCH))

    async def writer(mine: list[int]) -> None:
        for start in mine:
            async with tenant_tx(env.pool, TENANT) as conn:
                await rating_repo.post_transfers(conn, TENANT,
                                                 transfers(accounts, run, start, BATCH))

    started = time.perf_counter()
    await asyncio.gather(*(writer(batches[w::writers]) for w in range(writers)))
    return ROWS / (time.perf_counter() - started)


async def main() -> None:
    async with environment() as env:
        await example_tenant(env.pool, TENANT)
        accounts = await setup_accounts(env)
        owner = await asyncpg.connect(env.owner_dsn)
        try:
            canonical = await owner.fetchval(
                "SELECT canonical FROM audit_kinds WHERE kind = 'transfer'")
            canonical = re.sub(r"\br\.", "n.", canonical)  # the alias in INLINE_SQL
            await owner.execute(INLINE_SQL.format(tenant=TENANT, canonical=canonical))
            await analyze(env.owner_dsn)
            rates: dict[tuple[str, int], float] = {}
            # interleaved, twice, so drift on a shared machine hits every mode alike
            for round_ in range(ROUNDS):
                for writers in (1, WRITERS):
                    for mode in MODES:
                        await set_mode(owner, mode)
                        rate = await write(env, accounts, f"{mode}-{writers}-{round_}", writers)
                        rates[(mode, writers)] = max(rates.get((mode, writers), 0.0), rate)

            off_tenant, on_tenant = "bench-off", "bench-on"
            for tenant in (off_tenant, on_tenant):
                await example_tenant(env.pool, tenant)
            lines = {off_tenant: await subscribers(env.pool, off_tenant, LINES),
                     on_tenant: await subscribers(env.pool, on_tenant, LINES)}
            await analyze(env.owner_dsn)
            rated: dict[str, float] = {}
            for _ in range(ROUNDS):
                for tenant, mode in ((off_tenant, "baseline"), (on_tenant, "capture")):
                    await set_mode(owner, mode)
                    # 1 GB events: past the 5 GiB allowance after 5, so nearly all are charged
                    await publish_usage(env.nc, tenant, lines[tenant], RATED_EVENTS, QUANTITY)
                    rate = await rated_rate(env, tenant, RATED_EVENTS)
                    rated[mode] = max(rated.get(mode, 0.0), rate)
            await set_mode(owner, "capture")
            rated_off, rated_on = rated["baseline"], rated["capture"]

            # the tenant whose every transfer was captured (the others had capture off a while)
            started = time.perf_counter()
            chained = await chain_all(env.pool, on_tenant)
            chain_rate = chained.chained / (time.perf_counter() - started)
            started = time.perf_counter()
            report = await verify_chain(env.pool, on_tenant)
            verify_rate = report.verified / (time.perf_counter() - started)
            assert report.ok, report.first_break
            assert report.verified == chained.chained
        finally:
            await owner.close()

    def row(label: str, mode: str) -> str:
        one, many = rates[(mode, 1)], rates[(mode, WRITERS)]
        base_one, base_many = rates[("baseline", 1)], rates[("baseline", WRITERS)]
        return (f"| {label} | {one:,.0f} | {one / base_one:.2f} | {many:,.0f} |"
                f" {many / base_many:.2f} |")

    record("Audit trail cost", [
        f"Ledger write path: {ROWS:,} transfers per run in transactions of {BATCH} over "
        f"{ACCOUNTS:,} accounts, 1 writer and {WRITERS} concurrent writers; best of {ROUNDS} "
        "interleaved rounds.",
        "",
        f"| figure | 1 writer rows/s | ratio | {WRITERS} writers rows/s | ratio |",
        "| --- | --- | --- | --- | --- |",
        row("baseline: no audit capture", "baseline"),
        row("Tollgate: capture trigger (chained later)", "capture"),
        row("alternative: chain in the trigger under a per-tenant lock", "inline"),
        "",
        f"Offline rating, {RATED_EVENTS:,} data events of 1 GB per run over {LINES} subscribers"
        f" (charged past the allowance: one captured transfer each); best of {ROUNDS}"
        " interleaved rounds:",
        "",
        "| figure | events/s |",
        "| --- | --- |",
        f"| baseline: capture off | {rated_off:,.0f} |",
        f"| Tollgate: capture on | {rated_on:,.0f} |",
        f"| ratio | {rated_on / rated_off:.2f} |",
        "",
        f"Chainer: {chained.chained:,} events at {chain_rate:,.0f} events/s; "
        f"`audit verify`: {report.verified:,} events at {verify_rate:,.0f} events/s.",
    ])


if __name__ == "__main__":
    asyncio.run(main())
