"""Invariants 1–3 under crashes: SIGKILL the charging process over and over while 100k usage
events flow; afterwards every event is rated once or dead-lettered once, the ledger balances
and no prepaid balance is below zero."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from tests.conftest import Servers
from tests.factories import install_example_catalog, usage_payload
from tollgate_core import customer_service
from tollgate_core.store.db import Pool

EVENTS = 100_000
KILLS_MIN = 20
MALFORMED_EVERY = 100  # 1 % of messages are not valid JSON
REDELIVERED_EVERY = 97  # ~1 % are the same event again under another Nats-Msg-Id
TOLLGATE = Path(sys.executable).parent / "tollgate"


async def lines(pool: Pool, tenant: str) -> list[str]:
    """20 postpaid lines on the plan and 10 prepaid lines with 2.00 EUR each."""
    result = []
    for i in range(30):
        prepaid = i >= 20
        customer = await customer_service.register_customer(
            pool, tenant, name=f"C{i}", email=f"c{i}@example.de",
            payment_type="prepaid" if prepaid else "postpaid", customer_type="consumer",
            idempotency_key=f"r{i}")
        line = f"4915{i:08d}"
        await customer_service.place_order(pool, tenant, customer_id=customer, offer="mobile-m",
                                           subscriber=line, idempotency_key=f"o{i}")
        if prepaid:
            await customer_service.top_up(pool, tenant, customer_id=customer, amount="2.00",
                                          idempotency_key=f"t{i}")
        result.append(line)
    return result


async def publish(nc: Client, tenant: str, subscribers: list[str], rng: random.Random
                  ) -> tuple[set[str], int]:
    """Publish the workload; return the valid event ids and the number of malformed messages."""
    js = nc.jetstream()
    ids: set[str] = set()
    malformed = 0
    window = []
    previous: tuple[str, bytes] | None = None
    for i in range(EVENTS):
        if i % MALFORMED_EVERY == 0:
            payload, msg_id = b'{"id": "broken', f"bad-{i}"
            malformed += 1
        elif i % REDELIVERED_EVERY == 0 and previous is not None:
            msg_id, payload = f"again-{i}", previous[1]  # the same event, a new message id
        else:
            event_id, payload = usage_payload(tenant, rng.choice(subscribers),
                                              rng.randrange(1, 64) * 1024 * 1024)
            ids.add(event_id)
            msg_id, previous = event_id, (event_id, payload)
        window.append(js.publish(f"tg.{tenant}.usage.data", payload,
                                 headers={"Nats-Msg-Id": msg_id}))
        if len(window) == 1000:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    return ids, malformed


def start_engine(servers: Servers, tenant: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(TOLLGATE), "charging", "--tenant", tenant, "--batch-max", "500"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "TOLLGATE_DATABASE_URL": servers.app_dsn,
                 "TOLLGATE_NATS_URL": servers.nats_url, "TOLLGATE_LOG_LEVEL": "WARNING",
                 "TOLLGATE_METRICS_PORT": "0"})  # no port to share with other processes


async def backlog(nc: Client, tenant: str) -> int:
    try:
        info = await nc.jetstream().consumer_info("USAGE", f"charging-{tenant}")
    except NotFoundError:
        return EVENTS
    return int(info.num_pending) + int(info.num_ack_pending)


async def test_sigkill_mid_batch_loses_and_doubles_nothing(
        pool: Pool, nats_client: Client, servers: Servers, tenant_name: str,
        tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    await install_example_catalog(pool, tenant_name)
    valid_ids, malformed = await publish(nats_client, tenant_name,
                                         await lines(pool, tenant_name), rng)
    log = tmp_path / "charging.log"
    kills = 0
    while kills < KILLS_MIN:
        engine = start_engine(servers, tenant_name, log)
        await asyncio.sleep(rng.uniform(1.0, 2.5))  # start-up takes ~1 s, then batches flow
        if engine.poll() is not None:
            raise AssertionError(f"engine exited on its own:\n{log.read_text()[-3000:]}")
        assert await backlog(nats_client, tenant_name) > 0, "killed after the work was done"
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        kills += 1

    engine = start_engine(servers, tenant_name, log)
    try:
        for _ in range(1200):
            if await backlog(nats_client, tenant_name) == 0:
                break
            await asyncio.sleep(0.25)
        assert await backlog(nats_client, tenant_name) == 0, f"seed {seed}: backlog remains"
    finally:
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(timeout=30) == 0, log.read_text()[-3000:]

    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        await check_invariants(conn, tenant_name, valid_ids, malformed, seed)
    finally:
        await conn.close()


async def check_invariants(conn: asyncpg.Connection, tenant: str, valid_ids: set[str],
                           malformed: int, seed: int) -> None:
    rated = {str(r["event_id"]) for r in await conn.fetch(
        "SELECT event_id FROM rated_usage WHERE tenant_id = $1", tenant)}
    dead = await conn.fetch("SELECT event_id, reason FROM dead_letters WHERE tenant_id = $1",
                            tenant)
    dead_valid = {r["event_id"] for r in dead if r["reason"] != "MALFORMED_JSON"}
    # Invariant 1: each valid event rated exactly once or dead-lettered once, never both.
    assert rated | dead_valid == valid_ids, f"seed {seed}"
    assert not rated & dead_valid, f"seed {seed}"
    assert sum(r["reason"] == "MALFORMED_JSON" for r in dead) == malformed, f"seed {seed}"
    # Invariant 2: the ledger sums to zero; every balance is the sum of its transfers.
    assert await conn.fetchval("SELECT sum(balance_micros) FROM ledger_accounts"
                               " WHERE tenant_id = $1", tenant) == 0
    assert await conn.fetchval("""
        SELECT count(*) FROM ledger_accounts a WHERE a.tenant_id = $1 AND a.balance_micros <>
          coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = $1
                    AND t.credit_account = a.account_id), 0)
        - coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = $1
                    AND t.debit_account = a.account_id), 0)""", tenant) == 0
    # Invariant 3: no prepaid balance below zero.
    assert await conn.fetchval("SELECT count(*) FROM ledger_accounts WHERE tenant_id = $1"
                               " AND floor_micros IS NOT NULL AND balance_micros < 0",
                               tenant) == 0
    # Every rated charge is in the ledger, and allowances used equal what rated records drew.
    charged = await conn.fetchval("SELECT coalesce(sum(amount_micros), 0) FROM rated_usage"
                                  " WHERE tenant_id = $1", tenant)
    posted = await conn.fetchval("SELECT coalesce(sum(amount_micros), 0) FROM transfers"
                                 " WHERE tenant_id = $1 AND code IN ('usage', 'usageOverage')",
                                 tenant)
    assert charged == posted
    drawn = await conn.fetch(
        "SELECT subscription_id, sum(allowance_units) AS units FROM rated_usage"
        " WHERE tenant_id = $1 GROUP BY 1", tenant)
    used = {r["subscription_id"]: r["used"] for r in await conn.fetch(
        "SELECT subscription_id, sum(used) AS used FROM allowance_usage WHERE tenant_id = $1"
        " GROUP BY 1", tenant)}
    assert {r["subscription_id"]: r["units"] for r in drawn if r["units"]} == {
        k: v for k, v in used.items() if v}
