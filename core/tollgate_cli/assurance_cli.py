"""`tollgate audit …` and `tollgate assurance …`: the audit chain and legacy reconciliation."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tollgate_core.assurance.legacy_feed import AmountUnit
from tollgate_core.store.db import Pool

audit_app = typer.Typer(help="The hash-chained audit trail of money-moving records.",
                        no_args_is_help=True)
assurance_app = typer.Typer(help="Revenue assurance: reconciliation with a legacy BSS.",
                            no_args_is_help=True)
console = Console(stderr=True)
out = Console()

Tenant = Annotated[str, typer.Option(envvar="TOLLGATE_TENANT", help="Tenant id.")]
DatabaseUrl = Annotated[str | None, typer.Option(
    envvar="TOLLGATE_DATABASE_URL", help="PostgreSQL DSN of the application role "
    "(default: the local mode's, from --home).")]
Home = Annotated[Path, typer.Option(help="Local mode data and state folder.")]
T = TypeVar("T")


def _dsn(database_url: str | None, home: Path) -> str:
    if database_url:
        return database_url
    from tollgate_cli.localstate import load

    try:
        return load(home).app_dsn
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] no --database-url and no local mode state: {exc}")
        raise typer.Exit(2) from exc


def _with_pool(dsn: str, work: Callable[[Pool], Awaitable[T]]) -> T:
    from tollgate_core.store.db import create_pool

    async def run() -> T:
        pool = await create_pool(dsn, max_size=2)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def _progress() -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    return Progress(*columns, console=console, transient=not sys.stderr.isatty())


@audit_app.command("verify")
def audit_verify(
    tenant: Tenant,
    database_url: DatabaseUrl = None,
    chain: Annotated[bool, typer.Option(
        help="Chain the committed events first, so everything written so far is checked.")
    ] = True,
    anchor: Annotated[str | None, typer.Option(
        help="SEQUENCE:HASH kept outside the database (e.g. from an audit.chained event) "
             "that the chain must contain.")] = None,
    home: Home = Path(".tollgate"),
) -> None:
    """Recompute the tenant's audit chain from genesis; exit 1 at the first break."""
    from tollgate_core.assurance.chainer import chain_all
    from tollgate_core.assurance.verify import Anchor, VerifyReport, verify_chain

    try:
        expected = Anchor.parse(anchor) if anchor else None
    except ValueError as exc:
        console.print(f"[red]error:[/red] --anchor: {exc}")
        raise typer.Exit(2) from exc

    async def work(pool: Pool) -> VerifyReport:
        if chain:
            await chain_all(pool, tenant)
        with _progress() as progress:
            task = progress.add_task("verifying audit chain", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await verify_chain(pool, tenant, anchor=expected, progress=advance)

    report = _with_pool(_dsn(database_url, home), work)
    if report.first_break is None:
        out.print(f"OK: {report.verified} audit events verified from genesis; head "
                  f"{report.head_sequence}:{report.head_hash.hex()}"
                  + (f"; {report.pending} not chained yet" if report.pending else ""),
                  highlight=False, soft_wrap=True)
        return
    out.print(f"BREAK at {report.first_break.describe()}", highlight=False, soft_wrap=True)
    out.print(f"{report.verified} audit events verified before the break", highlight=False)
    raise typer.Exit(1)


@audit_app.command("chain")
def audit_chain(
    tenant: Tenant,
    database_url: DatabaseUrl = None,
    follow: Annotated[bool, typer.Option(help="Keep chaining until interrupted.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between rounds with --follow.")
                        ] = 1.0,
    home: Home = Path(".tollgate"),
) -> None:
    """Chain the committed audit events (the background task of the runtime, run once)."""
    import signal

    from tollgate_core.assurance.chainer import ChainRound, chain_all, chain_forever

    async def work(pool: Pool) -> ChainRound | None:
        if not follow:
            return await chain_all(pool, tenant)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await chain_forever(pool, tenant, stop, interval)
        return None

    result = _with_pool(_dsn(database_url, home), work)
    if result is not None:
        out.print(f"chained {result.chained} audit events; head "
                  f"{result.head_sequence}:{result.head_hash.hex()}", highlight=False,
                  soft_wrap=True)


def _moment(text: str | None, tz: ZoneInfo, option: str) -> datetime | None:
    """ISO 8601; a date or a time without offset is in the tenant's time zone."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {option}: {exc}")
        raise typer.Exit(2) from exc
    return value if value.tzinfo else value.replace(tzinfo=tz)


async def _tenant_zone(pool: Pool, tenant: str) -> ZoneInfo:
    from tollgate_core.store import catalog_repo
    from tollgate_core.store.db import tenant_tx

    async with tenant_tx(pool, tenant, readonly=True) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
    if spec is None:
        console.print(f"[red]error:[/red] tenant {tenant!r} does not exist")
        raise typer.Exit(2)
    return ZoneInfo(spec.timezone)


@assurance_app.command("gen-legacy")
def gen_legacy(
    tenant: Tenant,
    since: Annotated[str, typer.Option(help="Period start (ISO 8601; a date is midnight in "
                                            "the tenant's time zone).")],
    until: Annotated[str, typer.Option(help="Period end, exclusive.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the three CSV files.")
                       ] = Path("legacy-extract"),
    seed: int = 0,
    unit: Annotated[AmountUnit, typer.Option(help="Amount column: micro-units or the "
                                                  "currency's minor unit.")
                    ] = AmountUnit.MICRO,
    missing_rate: float = 0.01,
    duplicate_rate: float = 0.01,
    off_by_one_rate: float = 0.01,
    extra_rate: float = 0.002,
    no_event_id_rate: Annotated[float, typer.Option(
        help="Share of legacy records without Tollgate's event id (not a fault).")] = 0.0,
    database_url: DatabaseUrl = None,
    home: Home = Path(".tollgate"),
) -> None:
    """Write a legacy extract of the tenant's rated usage with injected discrepancies, and
    the ground truth of what was injected (docs/legacy-feed.md)."""
    from tollgate_core.assurance.legacy_gen import FaultRates, GeneratedFiles, generate

    try:
        rates = FaultRates(missing_rate, duplicate_rate, off_by_one_rate, extra_rate,
                           no_event_id_rate)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    async def work(pool: Pool) -> GeneratedFiles:
        tz = await _tenant_zone(pool, tenant)
        start, end = _moment(since, tz, "--since"), _moment(until, tz, "--until")
        assert start is not None
        assert end is not None
        return await generate(pool, tenant, out_dir, since=start, until=end, unit=unit,
                              rates=rates, seed=seed)

    try:
        with console.status("writing the legacy extract …"):
            files = _with_pool(_dsn(database_url, home), work)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out.print(f"{files.records}: {files.record_count} legacy records\n"
              f"{files.totals}: {files.total_count} account-day totals\n"
              f"{files.faults}: {files.fault_count} injected discrepancies", highlight=False)


@assurance_app.command("reconcile")
def reconcile_command(
    tenant: Tenant,
    file: Annotated[Path, typer.Argument(help="Legacy rated records (CSV).", exists=True,
                                         dir_okay=False)],
    totals: Annotated[Path | None, typer.Option(help="Legacy totals per account and day.",
                                                exists=True, dir_okay=False)] = None,
    since: Annotated[str | None, typer.Option(
        help="Period start (default: the first day of the extract).")] = None,
    until: Annotated[str | None, typer.Option(help="Period end, exclusive.")] = None,
    tolerance_micros: Annotated[int, typer.Option(
        min=0, help="Amount differences up to this many micro-units are no variance.")] = 0,
    tolerance_ppm: Annotated[int, typer.Option(
        min=0, help="… nor those up to this many millionths of Tollgate's amount.")] = 0,
    fail_on_variance: Annotated[bool, typer.Option(
        help="Exit 3 when any variance is found.")] = False,
    database_url: DatabaseUrl = None,
    nats_url: Annotated[str | None, typer.Option(
        envvar="TOLLGATE_NATS_URL", help="Publish the variance events now (otherwise the "
        "tenant's outbox relay does).")] = None,
    home: Home = Path(".tollgate"),
) -> None:
    """Match a legacy extract to Tollgate's rated usage and report the variances."""
    from tollgate_core.assurance.legacy_feed import FeedError
    from tollgate_core.assurance.reconcile import ReconcileResult, Tolerance, reconcile

    async def work(pool: Pool) -> ReconcileResult:
        tz = await _tenant_zone(pool, tenant)
        result = await reconcile(pool, tenant, file, totals=totals,
                                 since=_moment(since, tz, "--since"),
                                 until=_moment(until, tz, "--until"),
                                 tolerance=Tolerance(tolerance_micros, tolerance_ppm))
        if nats_url:
            await _relay(pool, tenant, nats_url)
        return result

    try:
        with console.status(f"reconciling {file.name} …"):
            result = _with_pool(_dsn(database_url, home), work)
    except FeedError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    table = Table(title=f"Reconciliation {result.run_id}", title_justify="left")
    table.add_column("figure")
    table.add_column("count", justify="right")
    table.add_row("period", f"{result.period_start.isoformat()} … "
                            f"{result.period_end.isoformat()}")
    table.add_row("legacy records", str(result.legacy_records))
    table.add_row("Tollgate records in the period", str(result.tollgate_records))
    table.add_row("matched", str(result.matched))
    for kind, count in sorted(result.by_kind.items()):
        table.add_row(kind, str(count))
    table.add_row("variances", str(result.variances))
    out.print(table)
    if fail_on_variance and result.variances:
        raise typer.Exit(3)


@assurance_app.command("sync")
def sync_command(
    tenant: Tenant,
    directory: Annotated[Path, typer.Option(
        "--dir", help="The folder shared with the legacy system (inbox/, outbox/, reports/).",
        file_okay=False)] = Path("/legacy"),
    reconcile_extracts: Annotated[bool, typer.Option(
        "--reconcile/--no-reconcile",
        help="Also reconcile the extracts in inbox/ (Tenant legacy.mode reconcile).")] = False,
    unit: Annotated[AmountUnit, typer.Option(
        help="Amount unit of the mirrored files.")] = AmountUnit.MICRO,
    tolerance_micros: Annotated[int, typer.Option(
        min=0, help="Amount differences up to this many micro-units are no variance.")] = 0,
    tolerance_ppm: Annotated[int, typer.Option(
        min=0, help="… nor those up to this many millionths of Tollgate's amount.")] = 0,
    settle_seconds: Annotated[float, typer.Option(
        min=0, help="Mirror only what was written at least this long ago (and before any "
        "transaction still open began).")] = 60.0,
    database_url: DatabaseUrl = None,
    nats_url: Annotated[str | None, typer.Option(
        envvar="TOLLGATE_NATS_URL", help="Publish the variance events now (otherwise the "
        "tenant's outbox relay does).")] = None,
    home: Home = Path(".tollgate"),
) -> None:
    """Exchange files with the legacy system: mirror rated usage and documents into outbox/,
    and with --reconcile reconcile each new extract of inbox/ (what the Tenant's CronJob runs).

    Exit 0 when done (variances are findings, not failures), 3 when an extract was refused
    (moved to inbox/failed/ with the reason; the others were processed), 4 when another sync
    of the tenant is running."""
    import structlog

    from tollgate_core.assurance.legacy_feed import FeedError
    from tollgate_core.assurance.legacy_sync import ExtractStatus, SyncBusy, SyncResult, sync
    from tollgate_core.assurance.reconcile import Tolerance

    log = structlog.get_logger("tollgate.assurance.sync")

    async def work(pool: Pool) -> SyncResult:
        await _tenant_zone(pool, tenant)

        async def relay() -> None:
            if not nats_url:
                return
            try:
                await _relay(pool, tenant, nats_url)
            except Exception as exc:  # the events stay in the outbox for the relay
                log.warning("variance events not published now; the tenant's outbox relay "
                            "will", tenant=tenant, error=f"{type(exc).__name__}: {exc}")

        with _progress() as progress:
            mirroring = progress.add_task("mirroring rated records", total=None)
            extracts = progress.add_task("reconciling extracts", total=None,
                                         visible=reconcile_extracts)

            def mirrored(done: int, total: int) -> None:
                progress.update(mirroring, completed=done, total=total)

            def reconciled(done: int, total: int, name: str) -> None:
                progress.update(extracts, completed=done, total=total,
                                description=f"reconciling {name}" if name
                                else "reconciling extracts")

            return await sync(pool, tenant, directory, reconcile_extracts=reconcile_extracts,
                              unit=unit, tolerance=Tolerance(tolerance_micros, tolerance_ppm),
                              settle_s=settle_seconds, mirror_progress=mirrored,
                              extract_progress=reconciled, on_done=relay)

    try:
        result = _with_pool(_dsn(database_url, home), work)
    except SyncBusy as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(4) from exc
    except (FeedError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if not result.mirrored:
        out.print("mirror: nothing new since the last batch", highlight=False)
    for m in result.mirrored:
        out.print(f"mirror: batch {m.batch_no}{' (resumed)' if m.resumed else ''}: "
                  f"{m.records} rated records, {m.totals} account-day totals, "
                  f"{m.documents} documents in {directory / 'outbox'}", highlight=False,
                  soft_wrap=True)
    if reconcile_extracts and not result.extracts:
        out.print("reconcile: no new extract in inbox/", highlight=False)
    if result.extracts:
        table = Table(title="Extracts", title_justify="left")
        table.add_column("extract", overflow="fold")
        table.add_column("status")
        table.add_column("variances", justify="right")
        table.add_column(f"report in {directory / 'reports'}", overflow="fold")
        for e in result.extracts:
            table.add_row(e.source, e.status.value,
                          "-" if e.status is ExtractStatus.FAILED else str(e.variances),
                          e.report.name)
        out.print(table)
        for e in result.failed:
            out.print(f"refused {e.source} (now in inbox/failed/): {e.error}",
                      highlight=False, soft_wrap=True)
    if result.failed:
        raise typer.Exit(3)


async def _relay(pool: Pool, tenant: str, nats_url: str) -> None:
    from tollgate_core.bus.nats import connect, ensure_streams
    from tollgate_core.store.outbox import relay_once

    nc = await connect(nats_url, name="tollgate-assurance")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        while await relay_once(pool, js, tenant):
            pass
    finally:
        await nc.close()
