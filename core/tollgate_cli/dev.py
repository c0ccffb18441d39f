"""`tollgate dev`: the whole BSS on one machine with real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import structlog
import uvicorn
from rich.console import Console

from tollgate_api.app import create_app
from tollgate_api.auth import TokenVerifier
from tollgate_cli.localstate import LocalState, load_or_create, save_partner_keys
from tollgate_core.billing.service import run_billing
from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.engines.runner import run_charging
from tollgate_core.local.apply import apply_resources, load_documents
from tollgate_core.local.servers import NatsServer, PostgresServer
from tollgate_core.settings import ApiSettings, BillingSettings, ChargingSettings
from tollgate_core.store.db import create_pool
from tollgate_core.store.migrate import migrate

log = structlog.get_logger(__name__)
TENANT_POLL_S = 2.0


class LocalRuntime:
    """Stands in for Deployments: a charging and a billing engine per tenant, started as
    tenants appear and restarted if they die."""

    def __init__(self, state: LocalState, stop: asyncio.Event) -> None:
        self.state = state
        self.stop = stop
        self.engines: dict[tuple[str, str], asyncio.Task[None]] = {}

    def _engine(self, kind: str, tenant: str) -> Coroutine[Any, Any, None]:
        # the API of this process serves the shared registry on its /metrics
        if kind == "charging":
            return run_charging(ChargingSettings(
                tenant=tenant, database_url=self.state.app_dsn, nats_url=self.state.nats_url,
                metrics_port=None), self.stop)
        return run_billing(BillingSettings(tenant, self.state.app_dsn, self.state.nats_url,
                                           metrics_port=None), self.stop)

    async def tenants(self) -> list[str]:
        conn = await asyncpg.connect(self.state.owner_dsn)
        try:
            return [r["tenant_id"] for r in await conn.fetch("SELECT tenant_id FROM tenants")]
        finally:
            await conn.close()

    async def supervise(self) -> None:
        while not self.stop.is_set():
            for tenant in await self.tenants():
                for kind in ("charging", "billing"):
                    task = self.engines.get((tenant, kind))
                    if task is None or task.done():
                        if task is not None and task.exception() is not None:
                            log.error("engine died; restarting", tenant=tenant, engine=kind,
                                      error=repr(task.exception()))
                        self.engines[(tenant, kind)] = asyncio.create_task(
                            self._engine(kind, tenant))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), TENANT_POLL_S)
        await asyncio.gather(*self.engines.values(), return_exceptions=True)


def banner(state: LocalState, token: str, revisions: dict[str, int]) -> str:
    """What to do next, with a query that pastes as it is (no wrapped lines)."""
    query = "{ offers { edges { node { id displayName catalogRevision } } } }"
    catalog = ", ".join(f"{t} revision {r}" for t, r in sorted(revisions.items())) or "unchanged"
    return "\n".join([
        "",
        "Tollgate is running.",
        f"  GraphQL     {state.graphql_url}   (open it in a browser for GraphiQL)",
        f"  Catalog     {catalog}",
        f"  NATS        {state.nats_url}",
        f"  PostgreSQL  127.0.0.1:{state.pg_port}",
        "",
        "Admin token for tenant de (also in .tollgate/token):",
        token,
        "",
        "Try it:",
        f"curl -s {state.graphql_url} -H \"Authorization: Bearer $(cat .tollgate/token)\" "
        f"-H 'Content-Type: application/json' -d '{{\"query\": \"{query}\"}}'",
        "",
        "Send usage:  .venv/bin/tollgate usage send --tenant de --subscriber 491700000001 "
        "--count 1000",
        "Stop with Ctrl-C; the data stays in .tollgate/ for the next run.",
    ])


async def run_dev(home: Path, examples: Path, pg_port: int, nats_port: int, api_port: int,
                  console: Console) -> None:
    state = load_or_create(home, pg_port, nats_port, api_port)
    postgres = PostgresServer(home / "pgdata", port=pg_port)
    nats = NatsServer(home / "nats", port=nats_port, sync_always=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with console.status("starting PostgreSQL and NATS JetStream"):
        postgres.start()
        nats.start()
    try:
        await migrate(state.owner_dsn, state.app_password)
        nc = await connect(state.nats_url, name="tollgate-dev")
        await ensure_streams(nc.jetstream())
        await nc.close()
        pool = await create_pool(state.app_dsn)
        try:
            report = await apply_resources(pool, load_documents(examples))
        finally:
            await pool.close()
        for error in report.errors:
            console.print(f"[red]invalid:[/red] {error}")
        for path in save_partner_keys(home, report.partner_keys):
            console.print(f"partner API key issued: {path} (send it as 'Authorization: ApiKey …')")
        verifier = TokenVerifier(state.jwt_secret, "tollgate-dev")
        api_settings = ApiSettings(database_url=state.app_dsn, nats_url=state.nats_url,
                                   jwt_secret=state.jwt_secret, port=api_port)
        server = uvicorn.Server(uvicorn.Config(create_app(api_settings), host="127.0.0.1",
                                               port=api_port, log_level="warning",
                                               lifespan="on"))
        api_task = asyncio.create_task(server.serve())
        runtime = LocalRuntime(replace(state), stop)
        supervisor = asyncio.create_task(runtime.supervise())
        while not server.started and not api_task.done():  # noqa: ASYNC110  (uvicorn has no event)
            await asyncio.sleep(0.05)
        if api_task.done():
            api_task.result()
        token = verifier.mint("de", "admin", ["admin"])
        (home / "token").write_text(token)
        (home / "token").chmod(0o600)
        console.print(banner(state, token, report.revisions), soft_wrap=True, highlight=False,
                      markup=False)
        await stop.wait()
        console.print("stopping…")
        server.should_exit = True
        await asyncio.gather(api_task, supervisor, return_exceptions=True)
    finally:
        nats.stop()
        postgres.stop()
