"""`tollgate settlement …`: partner settlement statements (ADR 0012)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

settlement_app = typer.Typer(help="Partner settlement (B2B2X): statements per period.",
                  no_args_is_help=True)
console = Console(stderr=True)

Tenant = Annotated[str, typer.Option(envvar="TOLLGATE_TENANT", help="Tenant id.")]
PeriodOption = Annotated[str, typer.Option(help="A month (2026-11) or a day (2026-11-05), in "
                                                "the tenant's timezone.")]
DatabaseUrl = Annotated[str | None, typer.Option(
    envvar="TOLLGATE_DATABASE_URL", help="PostgreSQL DSN of the application role (default: "
    "local mode's).")]
Home = Annotated[Path, typer.Option(help="Local mode data and state folder.")]


def _dsn(database_url: str | None, home: Path) -> str:
    if database_url:
        return database_url
    from tollgate_cli.localstate import load

    return load(home).app_dsn


def _rates(rate: list[str] | None) -> dict[str, str]:
    rates: dict[str, str] = {}
    for item in rate or []:
        currency, sep, value = item.partition("=")
        if not sep or len(currency) != 3 or not value:
            raise typer.BadParameter(f"{item!r}: expected CUR=RATE, e.g. USD=1.0825",
                                     param_hint="--rate")
        rates[currency.upper()] = value
    return rates


@settlement_app.command("statements")
def statements(
    tenant: Tenant, period: PeriodOption,
    rate: Annotated[list[str] | None, typer.Option(
        help="Exact FX rate for a settlement currency other than the tenant's: CUR=RATE, "
             "units of CUR per unit of the tenant currency (repeatable).")] = None,
    agreement: Annotated[list[str] | None, typer.Option(
        help="Only these partner agreements (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statement documents "
                                                         "as JSON on stdout.")] = False,
    database_url: DatabaseUrl = None, home: Home = Path(".tollgate"),
) -> None:
    """Make the settlement statements of a period (once; a rerun shows the same ones)."""
    from tollgate_core.domain.settlement import SettlementError
    from tollgate_core.settlement.statements import StatementResult, run_statements
    from tollgate_core.store.db import create_pool

    rates = _rates(rate)
    dsn = _dsn(database_url, home)

    async def run() -> list[StatementResult]:
        pool = await create_pool(dsn)
        try:
            return await run_statements(pool, tenant, period, rates, agreements=agreement)
        finally:
            await pool.close()

    try:
        results = asyncio.run(run())
    except SettlementError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    made = [r for r in results if r.statement is not None]
    if as_json:
        typer.echo(json.dumps([r.statement for r in made], indent=2))
    table = Table("agreement", "period", "records", "partner share", "adjustment", "payable",
                  "API calls", "API charges", "net", "statement",
                  title=f"settlement statements of {tenant}, {period}")
    for r in made:
        body: dict[str, Any] = r.statement or {}
        settled = body["settlement"]
        apis = body.get("networkApis", {})  # version 1 statements have no network API side
        table.add_row(r.agreement, r.period.label, str(body["records"]),
                      _amount(settled["partnerShare"]), _amount(settled["adjustment"])
                      + (f" ({body['ledger']['adjustmentKind']})"
                         if body["ledger"]["adjustmentKind"] else ""),
                      _amount(settled["payable"]), str(apis.get("calls", 0)),
                      _amount(settled.get("networkApiCharges", settled["payable"] | {
                          "amount": "0"})),
                      _amount(settled.get("net", settled["payable"]))
                      + _direction(settled.get("netDirection")),
                      "made" if r.created else "existing")
    console.print(table)
    errors = [r for r in results if r.error]
    for r in errors:
        console.print(f"[red]error:[/red] {r.agreement} {r.period.label}: {r.error}",
                      highlight=False)
    if errors:
        raise typer.Exit(1)


@settlement_app.command("show")
def show(tenant: Tenant, period: PeriodOption,
         agreement: Annotated[str | None, typer.Option(help="Only this agreement.")] = None,
         database_url: DatabaseUrl = None, home: Home = Path(".tollgate")) -> None:
    """Print the stored statements of a period as JSON."""
    from tollgate_core.domain.settlement import SettlementError
    from tollgate_core.settlement.statements import list_statements
    from tollgate_core.store.db import create_pool

    dsn = _dsn(database_url, home)

    async def run() -> list[dict[str, Any]]:
        pool = await create_pool(dsn)
        try:
            return await list_statements(pool, tenant, period, agreement)
        finally:
            await pool.close()

    try:
        typer.echo(json.dumps(asyncio.run(run()), indent=2))
    except SettlementError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc


def _amount(money: dict[str, Any]) -> str:
    return f"{money['amount']} {money['currency']}"


def _direction(direction: str | None) -> str:
    return {"operatorPaysPartner": " (to partner)",
            "partnerPaysOperator": " (from partner)"}.get(direction or "", "")
