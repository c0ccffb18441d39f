"""`tollgate billing …`: the billing engine (no sub-command) and its one-off operations."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tollgate_core.store.db import Pool, create_pool

billing_app = typer.Typer(help="Bill runs, payments, credit notes, dunning and documents.",
                          invoke_without_command=True)
console = Console(stderr=True)
T = TypeVar("T")

Tenant = Annotated[str, typer.Option(envvar="TOLLGATE_TENANT", help="Tenant (market) id.")]
DatabaseUrl = Annotated[str, typer.Option(envvar="TOLLGATE_DATABASE_URL",
                                          help="PostgreSQL DSN of the application role.")]


def _with_pool(database_url: str, work: Callable[[Pool], Awaitable[T]]) -> T:
    async def run() -> T:
        pool = await create_pool(database_url, max_size=4)
        try:
            return await work(pool)
        finally:
            await pool.close()
    return asyncio.run(run())


@billing_app.callback()
def engine(ctx: typer.Context, tenant: Tenant = "", database_url: DatabaseUrl = "",
           nats_url: Annotated[str, typer.Option(envvar="TOLLGATE_NATS_URL")] = "",
           metrics_port: Annotated[int, typer.Option(envvar="TOLLGATE_METRICS_PORT")] = 9090,
           interval_s: float = 60.0) -> None:
    """Without a sub-command: run the billing engine of one tenant until SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    if not (tenant and database_url and nats_url):
        raise typer.BadParameter("--tenant, --database-url and --nats-url are required")
    from tollgate_core.billing.service import run_billing
    from tollgate_core.settings import BillingSettings

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_billing(BillingSettings(tenant, database_url, nats_url,
                                          interval_s=interval_s, metrics_port=metrics_port,
                                          metrics_host="0.0.0.0"), stop)  # noqa: S104
    asyncio.run(run())


@billing_app.command("run")
def run_(tenant: Tenant, database_url: DatabaseUrl,
         period: Annotated[str, typer.Option(help="Bill period by its start month, YYYY-MM.")],
         batch: Annotated[int, typer.Option(min=1, max=10_000)] = 500) -> None:
    """Bill every account for one period (resumable: run it again after a failure).

    An account is billed once the period has ended in its timezone; accounts whose period is
    not over yet are left for a later run (or the billing engine)."""
    from tollgate_core.billing.run import bill_run
    from tollgate_core.domain.billing import period_starting_in
    from tollgate_core.store import catalog_repo
    from tollgate_core.store.db import tenant_tx

    try:
        year, month = (int(p) for p in period.split("-"))
    except ValueError as exc:
        raise typer.BadParameter("--period: expected YYYY-MM, e.g. 2026-11") from exc

    async def work(pool: Pool) -> None:
        async with tenant_tx(pool, tenant, readonly=True) as conn:
            spec = await catalog_repo.get_tenant(conn, tenant)
            total = await conn.fetchval("SELECT count(*) FROM customers")
        if spec is None:
            raise typer.BadParameter(f"--tenant: no tenant {tenant!r}")
        bill_period = period_starting_in(year, month, spec.billing.cycle_day)
        columns = (TextColumn("bill run {task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"{bill_period.start}", total=total)
            result = await bill_run(pool, tenant, bill_period, batch=batch,
                                    progress=lambda n: bar.advance(task, n),
                                    now=datetime.now(UTC))
        console.print(f"{result.documents} documents issued for {bill_period.start} to "
                      f"{bill_period.end} ({result.accounts_seen} accounts, "
                      f"{result.seconds:.1f} s)")
        if result.waiting_zones:
            console.print("not billed yet (the period has not ended in their timezone): "
                          f"accounts in {', '.join(result.waiting_zones)}")
    _with_pool(database_url, work)


@billing_app.command()
def pay(tenant: Tenant, database_url: DatabaseUrl,
        customer: Annotated[str, typer.Option(help="Customer id.")],
        amount: Annotated[str, typer.Option(help="Decimal amount, e.g. 19.99.")],
        payment_id: Annotated[str, typer.Option(help="Payment reference (idempotent).")],
        method: str = "bankTransfer") -> None:
    """Record a payment and settle open invoices, oldest first."""
    from tollgate_core.billing.payments import record_payment
    from tollgate_core.domain.money import parse_micros

    result = _with_pool(database_url, lambda pool: record_payment(
        pool, tenant, payment_id, uuid.UUID(customer), parse_micros(amount), method))
    console.print_json(json.dumps({"paymentId": result.payment_id, "duplicate": result.duplicate,
                                   "applied": {str(i): a for i, a in result.applied},
                                   "unappliedMicros": result.unapplied_micros}))


@billing_app.command()
def credit(tenant: Tenant, database_url: DatabaseUrl,
           invoice: Annotated[str, typer.Option(help="Invoice id.")],
           amount: Annotated[str, typer.Option(help="Gross amount to credit, e.g. 5.00.")],
           reason: Annotated[str, typer.Option()],
           credit_note_id: Annotated[str, typer.Option(help="Idempotent reference.")]) -> None:
    """Issue a credit note against an invoice."""
    from tollgate_core.billing.payments import credit_invoice
    from tollgate_core.domain.money import parse_micros

    note = _with_pool(database_url, lambda pool: credit_invoice(
        pool, tenant, credit_note_id, uuid.UUID(invoice), parse_micros(amount), reason))
    console.print(f"credit note {note.bill_no}: net {note.net_micros} tax {note.tax_micros}")


@billing_app.command()
def dunning(tenant: Tenant, database_url: DatabaseUrl,
            today: Annotated[str | None, typer.Option(help="YYYY-MM-DD; default today")] = None
            ) -> None:
    """Mark overdue invoices, send reminders, suspend accounts long overdue."""
    from tollgate_core.billing.payments import run_dunning

    day = date.fromisoformat(today) if today else datetime.now(UTC).date()
    result = _with_pool(database_url, lambda pool: run_dunning(pool, tenant, day))
    console.print(f"overdue {result.overdue}, reminders {result.reminders}, "
                  f"suspended {result.suspended}")


@billing_app.command()
def show(tenant: Tenant, database_url: DatabaseUrl,
         bill_no: Annotated[str, typer.Argument(help="Document number, e.g. INV-2026-00000001.")],
         format_: Annotated[str, typer.Option("--format", help="json or html")] = "json") -> None:
    """Print an invoice or statement as TMF678 JSON or as HTML."""
    from tollgate_core.billing import documents

    doc = _with_pool(database_url, lambda pool: documents.load(pool, tenant, bill_no=bill_no))
    if doc is None:
        raise typer.BadParameter(f"no document {bill_no!r}")
    if format_ == "html":
        typer.echo(documents.to_html(doc))
    else:
        typer.echo(json.dumps(documents.to_json(doc), indent=2))
