"""Kill `tollgate billing run` with SIGKILL while it bills, again and again, then let it finish:
every account is billed exactly once, numbers have no hole and no duplicate, the ledger
balances."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from tests.billing.test_bill_run import TZ, customers, ledger_check, period_for
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tests.running import eventually
from tollgate_core.domain.billing import local_midnight
from tollgate_core.store.db import Pool, tenant_tx

ACCOUNTS = 1_500
KILLS = 5


async def test_sigkill_mid_run_then_resume_bills_each_account_once(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    period = await period_for(pool, tenant_name)
    await customers(pool, tenant_name, ACCOUNTS, local_midnight(period.start, TZ))
    command = [str(Path(sys.executable).parent / "tollgate"), "billing", "run",
               "--tenant", tenant_name, "--database-url", servers.app_dsn,
               "--period", f"{period.start:%Y-%m}", "--batch", "10"]
    env = {**os.environ, "TERM": "dumb"}

    async def billed() -> int:
        async with tenant_tx(pool, tenant_name) as conn:
            return int(await conn.fetchval("SELECT count(*) FROM invoices"))

    rng = random.Random(7)
    kills = 0
    for _ in range(KILLS):
        before = await billed()
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async def progressed(floor: int = before,
                                 running: asyncio.subprocess.Process = process) -> bool:
                return await billed() > floor or running.returncode is not None
            await eventually(progressed, deadline_s=60)
            await asyncio.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a later batch
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            await process.wait()
    assert kills >= 3, "the run finished before it could be killed enough times"
    assert 0 < await billed() < ACCOUNTS
    finish = await asyncio.create_subprocess_exec(*command, env=env,
                                                  stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE)
    _, stderr = await asyncio.wait_for(finish.communicate(), timeout=300)
    assert finish.returncode == 0, stderr.decode()
    async with tenant_tx(pool, tenant_name) as conn:
        numbers = [r["number"] for r in await conn.fetch(
            "SELECT number FROM invoices ORDER BY number")]
        accounts = await conn.fetchval("SELECT count(DISTINCT customer_id) FROM invoices")
        lines_ok = await conn.fetchval(
            "SELECT bool_and(i.total_micros = l.total) FROM invoices i JOIN (SELECT invoice_id,"
            " sum(net_micros + tax_micros) AS total FROM invoice_lines GROUP BY invoice_id) l"
            " USING (invoice_id)")
    assert numbers == list(range(1, ACCOUNTS + 1))
    assert accounts == ACCOUNTS
    assert lines_ok
    assert await ledger_check(servers, tenant_name) == (0, 0)
