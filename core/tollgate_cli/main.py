"""Entry point of the `tollgate` command (typer). Settings are read here, once."""

from __future__ import annotations

import asyncio
import gc
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tollgate_cli.assurance_cli import assurance_app, audit_app
from tollgate_cli.billing import billing_app
from tollgate_cli.settlement import settlement_app
from tollgate_core.observability import configure_logging
from tollgate_core.resources.offer import Service

app = typer.Typer(help="Tollgate: cloud-native BSS for telecom operators.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
usage_app = typer.Typer(help="Usage events.", no_args_is_help=True)
app.add_typer(usage_app, name="usage")
app.add_typer(billing_app, name="billing")
app.add_typer(settlement_app, name="settlement")
app.add_typer(audit_app, name="audit")
app.add_typer(assurance_app, name="assurance")
console = Console(stderr=True)

Home = Annotated[Path, typer.Option(help="Local mode data and state folder.")]
DatabaseUrl = Annotated[str, typer.Option(envvar="TOLLGATE_DATABASE_URL",
                                          help="PostgreSQL DSN of the application role.")]
NatsUrl = Annotated[str, typer.Option(envvar="TOLLGATE_NATS_URL", help="NATS URL.")]


@app.callback()
def main(log_level: Annotated[str, typer.Option(envvar="TOLLGATE_LOG_LEVEL")] = "INFO") -> None:
    configure_logging(log_level.upper())


@app.command()
def dev(home: Home = Path(".tollgate"),
        examples: Annotated[Path, typer.Option(help="Resource YAML to apply.")] = Path("examples"),
        pg_port: int = 55432, nats_port: int = 14222, api_port: int = 8080) -> None:
    """Run the whole BSS locally: PostgreSQL, NATS, the example catalog, charging and the API."""
    from tollgate_cli.dev import run_dev

    asyncio.run(run_dev(home, examples, pg_port, nats_port, api_port, console))


@app.command()
def apply(file: Annotated[Path, typer.Option("-f", "--filename", help="YAML file or folder.")],
          home: Home = Path(".tollgate")) -> None:
    """Validate resources and reconcile them in local mode (like `kubectl apply -f`)."""
    from tollgate_cli.localstate import load, save_partner_keys
    from tollgate_core.local.apply import apply_resources, load_documents
    from tollgate_core.resources import ResourceError
    from tollgate_core.store.db import create_pool

    try:
        resources = load_documents(file)
    except ResourceError as exc:
        for error in exc.errors:
            console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc
    try:
        state = load(home)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc

    async def run() -> None:
        pool = await create_pool(state.app_dsn)
        try:
            report = await apply_resources(pool, resources)
        finally:
            await pool.close()
        for resource in resources:
            console.print(f"{resource.kind.lower()}/{resource.metadata.name} applied")
        for tenant, revision in sorted(report.revisions.items()):
            console.print(f"tenant {tenant}: catalog revision {revision}")
        for path in save_partner_keys(home, report.partner_keys):
            console.print(f"partner API key issued: {path}")
        for error in report.errors:
            console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        if report.errors:
            raise typer.Exit(1)

    asyncio.run(run())


@usage_app.command("send")
def usage_send(tenant: Annotated[str, typer.Option()],
               subscriber: Annotated[str, typer.Option(help="MSISDN of the line.")],
               count: int = 100, service: Service = Service.DATA,
               quantity: Annotated[int, typer.Option(help="Units per event.")] = 1_048_576,
               nats_url: Annotated[str | None, typer.Option(envvar="TOLLGATE_NATS_URL")] = None,
               home: Home = Path(".tollgate")) -> None:
    """Publish COUNT synthetic usage events with Nats-Msg-Id, with a progress bar."""
    from tollgate_cli.localstate import load
    from tollgate_cli.usage_send import send_usage

    url = nats_url or load(home).nats_url
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=not sys.stderr.isatty()) as progress:
        asyncio.run(send_usage(url, tenant, subscriber, service, quantity, count, progress))
    console.print(f"published {count} usage events")


@usage_app.command("redrive")
def usage_redrive(tenant: Annotated[str, typer.Option()],
                  reason: Annotated[list[str] | None, typer.Option(
                      help="Only these reasons (default: every re-drivable one).")] = None,
                  database_url: Annotated[str | None, typer.Option(
                      envvar="TOLLGATE_DATABASE_URL")] = None,
                  home: Home = Path(".tollgate")) -> None:
    """Send dead-lettered usage back to the charging engine once its cause is fixed."""
    from tollgate_cli.localstate import load
    from tollgate_core.domain.usage import RejectReason
    from tollgate_core.store.db import create_pool
    from tollgate_core.store.redrive import REDRIVABLE, redrive

    try:
        reasons = tuple(RejectReason(r) for r in reason) if reason else REDRIVABLE
    except ValueError as exc:
        console.print(f"[red]error:[/red] --reason: {exc}; re-drivable: "
                      f"{', '.join(r.value for r in REDRIVABLE)}")
        raise typer.Exit(2) from exc
    dsn = database_url or load(home).app_dsn

    async def run() -> int:
        pool = await create_pool(dsn)
        try:
            return await redrive(pool, tenant, f"charging-{tenant}", reasons)
        finally:
            await pool.close()

    console.print(f"re-driven: {asyncio.run(run())} dead-lettered usage events")


@app.command()
def charging(tenant: Annotated[str, typer.Option(envvar="TOLLGATE_TENANT")],
             database_url: DatabaseUrl, nats_url: NatsUrl,
             batch_max: Annotated[int, typer.Option(envvar="TOLLGATE_BATCH_MAX")] = 500,
             metrics_port: Annotated[int, typer.Option(
                 envvar="TOLLGATE_METRICS_PORT",
                 help="Port of Prometheus /metrics; 0: not served.")] = 9090,
             metrics_host: Annotated[str, typer.Option(
                 envvar="TOLLGATE_METRICS_HOST",
                 help="Address of /metrics.")] = "0.0.0.0",  # noqa: S104  (a pod listens)
             ) -> None:
    """Run the charging engine of one tenant until SIGTERM; Prometheus metrics on /metrics."""
    import signal

    from tollgate_core.engines.runner import run_charging
    from tollgate_core.settings import ChargingSettings

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_charging(ChargingSettings(tenant=tenant, database_url=database_url,
                                            nats_url=nats_url, batch_max=batch_max,
                                            metrics_port=metrics_port or None,
                                            metrics_host=metrics_host), stop)

    asyncio.run(run())


@app.command()
def api(database_url: DatabaseUrl, nats_url: NatsUrl,
        jwt_secret: Annotated[str, typer.Option(envvar="TOLLGATE_JWT_SECRET")],
        host: str = "0.0.0.0", port: int = 8080,  # noqa: S104  (a container listens on all)
        graphiql: Annotated[bool, typer.Option(envvar="TOLLGATE_GRAPHIQL")] = False,
        rate_limit_per_s: Annotated[float, typer.Option(
            envvar="TOLLGATE_RATE_LIMIT_PER_S",
            help="Requests/s per credential (anonymous: per address); 0 = off.")] = 50.0,
        rate_limit_burst: Annotated[int, typer.Option(
            envvar="TOLLGATE_RATE_LIMIT_BURST", help="Burst above the rate.")] = 100,
        ws_connections_per_credential: Annotated[int, typer.Option(
            envvar="TOLLGATE_WS_CONNECTIONS_PER_CREDENTIAL",
            help="Open websocket connections per credential; 0 = no cap.")] = 16,
        ws_operations_per_connection: Annotated[int, typer.Option(
            envvar="TOLLGATE_WS_OPERATIONS_PER_CONNECTION",
            help="Subscriptions at once on one websocket connection.")] = 100) -> None:
    """Serve the GraphQL API."""
    import uvicorn

    from tollgate_api.app import create_app
    from tollgate_core.settings import ApiSettings

    settings = ApiSettings(database_url=database_url, nats_url=nats_url, jwt_secret=jwt_secret,
                           host=host, port=port, graphiql=graphiql,
                           rate_limit_per_s=rate_limit_per_s, rate_limit_burst=rate_limit_burst,
                           ws_connections_per_credential=ws_connections_per_credential,
                           ws_operations_per_connection=ws_operations_per_connection)
    application = create_app(settings)
    # What is loaded by now (modules, the schema) lives as long as the process: keep it out of
    # the cyclic collector's full passes, which stop every live update for as long as they
    # take to walk the heap. Requests leave no reference cycles, so the young generation is
    # collected every 50,000 net allocations, not every 700 (which ran about once per
    # request, traversed the requests in flight and found nothing; ADR 0009).
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(50_000, older, oldest)
    # uvloop's event loop and httptools' parser (C) instead of asyncio's and h11's (Python).
    uvicorn.run(application, host=host, port=port, log_level="warning", loop="uvloop",
                http="httptools")


@app.command("operator")
def operator_(
    image: Annotated[str, typer.Option(envvar="TOLLGATE_WORKLOAD_IMAGE",
                                       help="Image of the tenant workloads.")],
    watch_namespaces: Annotated[str, typer.Option(
        envvar="TOLLGATE_WATCH_NAMESPACES",
        help="Comma-separated namespaces or globs; empty: cluster-wide.")] = "",
    peering_mode: Annotated[str, typer.Option(envvar="TOLLGATE_PEERING_MODE")] = "auto",
    peering_name: Annotated[str, typer.Option(envvar="TOLLGATE_PEERING_NAME")] = (
        "tollgate-operator"),
    peering_priority: Annotated[int, typer.Option(envvar="TOLLGATE_PEERING_PRIORITY")] = 0,
    kubeconfig: Annotated[Path | None, typer.Option(
        help="Default: in-cluster, then $KUBECONFIG.")] = None,
    liveness_endpoint: Annotated[str | None, typer.Option(
        envvar="TOLLGATE_LIVENESS_ENDPOINT")] = None,
    metrics_port: Annotated[int | None, typer.Option(envvar="TOLLGATE_METRICS_PORT")] = None,
    resync_interval_s: float = 30.0,
) -> None:
    """Run the Kubernetes operator (Tenants, Offers, PartnerAgreements)."""
    from tollgate_operator.main import run
    from tollgate_operator.settings import PeeringMode, PeeringSettings, Settings

    namespaces = tuple(n.strip() for n in watch_namespaces.split(",") if n.strip())
    run(Settings(image=image, namespaces=namespaces, kubeconfig=kubeconfig,
                 peering=PeeringSettings(PeeringMode(peering_mode), peering_name,
                                         peering_priority),
                 liveness_endpoint=liveness_endpoint, metrics_port=metrics_port,
                 resync_interval_s=resync_interval_s))


@app.command()
def migrate(database_url: Annotated[str, typer.Option(envvar="TOLLGATE_OWNER_DATABASE_URL",
                                                      help="DSN of the schema owner.")],
            app_password: Annotated[str | None, typer.Option(
                envvar="TOLLGATE_APP_PASSWORD")] = None) -> None:
    """Apply pending schema migrations."""
    from tollgate_core.store.migrate import migrate as run_migrations

    applied = asyncio.run(run_migrations(database_url, app_password))
    console.print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


if __name__ == "__main__":
    app()
