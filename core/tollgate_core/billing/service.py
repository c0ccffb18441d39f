"""`tollgate billing`: the billing engine of one tenant as a long-running process.

It bills each bill period once it has ended (resuming a run that was interrupted; an account
is billed once the period has ended in its own timezone), runs dunning, extends the tenant's
audit chain, and relays billing events from the outbox to NATS. One replica per tenant: bill
runs number documents from one series (a second replica would only wait on the series row)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import structlog

from tollgate_core.assurance.chainer import chain_forever
from tollgate_core.billing.payments import run_dunning
from tollgate_core.billing.run import bill_run, last_closed_period, periods_ended
from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.customer_service import complete_due_cancellations
from tollgate_core.observability import metrics_endpoint
from tollgate_core.settings import BillingSettings
from tollgate_core.store import billing_repo, catalog_repo, outbox
from tollgate_core.store.db import Pool, create_pool, tenant_tx

log = structlog.get_logger(__name__)


async def billing_pass(pool: Pool, tenant: str, now: datetime, batch: int) -> None:
    """Carry out cancellations due at the end of a period, bill the latest ended period if
    its run has not finished, then dunning.

    Accounts may bill in timezones of their own, so "the latest ended period" is one per
    timezone: a run starts once the tenant's period (or one east of it) has ended, bills the
    accounts whose period is over, and is carried on by later passes until every account's
    period has ended. An older period is only carried on, never started (a tenant going live
    is billed from its current period)."""
    await complete_due_cancellations(pool, tenant)
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        if spec is None:
            log.warning("tenant not published yet", tenant=tenant)
            return
        current = last_closed_period(now, spec)
        runs = {r["period_start"]: r["finished"] for r in await conn.fetch(
            "SELECT period_start, finished_at IS NOT NULL AS finished FROM bill_runs"
            " WHERE period_start >= $1", current.previous().start)}
        due = [p for p in periods_ended(now, spec, await billing_repo.account_timezones(conn))
               if runs.get(p.start) is False or (p.start not in runs and p >= current)]
    for period in due:
        await bill_run(pool, tenant, period, batch=batch, now=now)
    await run_dunning(pool, tenant, now.astimezone(UTC).date())


async def run_billing(settings: BillingSettings, stop: asyncio.Event) -> None:
    async with metrics_endpoint(settings.metrics_host, settings.metrics_port):
        pool = await create_pool(settings.database_url, min_size=1, max_size=4)
        nc = await connect(settings.nats_url, name=f"billing-{settings.tenant}")
        wake = asyncio.Event()
        try:
            js = nc.jetstream()
            await ensure_streams(js)
            relay = asyncio.create_task(outbox.relay_forever(pool, js, settings.tenant, wake))
            # the audit chain of the tenant's money movements (ADR 0011); safe beside others
            chainer = asyncio.create_task(chain_forever(pool, settings.tenant, stop))
            while not stop.is_set():
                try:
                    await billing_pass(pool, settings.tenant, datetime.now(UTC), settings.batch)
                    wake.set()
                except Exception:  # keep serving; the next pass resumes where this one failed
                    log.exception("billing pass failed", tenant=settings.tenant)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=settings.interval_s)
            relay.cancel()
            await asyncio.gather(relay, chainer, return_exceptions=True)
        finally:
            await nc.close()
            await pool.close()
