"""A partner's settlement statements (ADR 0012) on the `partner` field: the revenue share it
earned, the network API charges it owes (ADR 0015) and the net, as issued (statements are
immutable, so what the partner sees here never changes)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import Enum

import strawberry

from tollgate_api.common import keyset, keyset_cursor, page_size
from tollgate_api.context import Context
from tollgate_api.types import Long, Money, PageInfo
from tollgate_core.store import settlement_repo
from tollgate_core.store.db import tenant_tx
from tollgate_core.store.settlement_repo import StatementSummary


@strawberry.enum(description="Who pays whom a statement's net amount.")
class NetDirection(Enum):
    OPERATOR_PAYS_PARTNER = "operatorPaysPartner"
    PARTNER_PAYS_OPERATOR = "partnerPaysOperator"
    NONE = "none"


@strawberry.type(description="A settlement period: local dates [start, end) of the tenant's "
                 "timezone.")
class SettlementPeriod:
    kind: str = strawberry.field(description="monthly or daily.")
    start: date
    end: date = strawberry.field(description="Exclusive.")


@strawberry.type(description="A statement's amounts in the partner's settlement currency, "
                 "rounded half-even to its ISO 4217 minor unit (payable and network API "
                 "charges converted, net their difference).")
class SettledAmounts:
    currency: str
    fx_rate: str | None = strawberry.field(description="Exact rate used (settlement currency "
                                           "per tenant currency unit); null when the same.")
    payable: Money
    network_api_charges: Money
    net: Money


@strawberry.type(description="A partner settlement statement: what the partner earned from "
                 "revenue shares (payable, after a minimum guarantee or cap), what its network "
                 "API calls cost it, and the net. Amounts in the tenant's currency unless said "
                 "otherwise.")
class SettlementStatement:
    id: uuid.UUID
    period: SettlementPeriod
    catalog_revision: int = strawberry.field(description="The revision whose terms applied.")
    records: int = strawberry.field(description="Rated records whose revenue was shared.")
    gross: Money = strawberry.field(description="Gross revenue of those records.")
    partner_share: Money
    adjustment: Money = strawberry.field(description="Top-up to the minimum guarantee (> 0) "
                                         "or clawback down to the cap (< 0).")
    adjustment_kind: str | None = strawberry.field(description="minimumGuarantee or cap.")
    payable: Money = strawberry.field(description="Share plus adjustment.")
    network_api_calls: int = strawberry.field(graphql_type=Long)
    network_api_charges: Money = strawberry.field(description="What those calls cost the "
                                                  "partner, netted against the payable.")
    net: Money = strawberry.field(description="Payable less network API charges: > 0 the "
                                  "operator pays the partner, < 0 the partner pays.")
    net_direction: NetDirection
    settled: SettledAmounts
    issued_at: datetime


@strawberry.type
class SettlementStatementEdge:
    cursor: str
    node: SettlementStatement


@strawberry.type
class SettlementStatementConnection:
    edges: list[SettlementStatementEdge]
    page_info: PageInfo


def _statement(row: StatementSummary) -> SettlementStatement:
    cur, settle = row.currency, row.settlement_currency

    def money(micros: int, currency: str = cur) -> Money:
        return Money(amount_micros=micros, currency=currency)

    net = row.settled_net_micros
    direction = (NetDirection.OPERATOR_PAYS_PARTNER if net > 0 else
                 NetDirection.PARTNER_PAYS_OPERATOR if net < 0 else NetDirection.NONE)
    return SettlementStatement(
        id=row.statement_id,
        period=SettlementPeriod(kind=row.period, start=row.period_start, end=row.period_end),
        catalog_revision=row.catalog_revision, records=row.records,
        gross=money(row.gross_micros), partner_share=money(row.share_micros),
        adjustment=money(row.adjustment_micros), adjustment_kind=row.adjustment_kind,
        payable=money(row.payable_micros), network_api_calls=row.network_api_calls,
        network_api_charges=money(row.network_api_micros), net=money(row.net_micros),
        net_direction=direction,
        settled=SettledAmounts(
            currency=settle, fx_rate=row.fx_rate,
            payable=money(row.settled_payable_micros, settle),
            network_api_charges=money(row.settled_network_api_micros, settle),
            net=money(row.settled_net_micros, settle)),
        issued_at=row.issued_at)


async def statement_connection(ctx: Context, agreement: str, first: int,
                               after: str | None) -> SettlementStatementConnection:
    """Called for an agreement the caller may see (the `partner` field checked that)."""
    limit = page_size(first)
    async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
        rows = await settlement_repo.statement_page(conn, agreement, limit + 1, keyset(after))
    edges = [SettlementStatementEdge(cursor=keyset_cursor(r.issued_at, r.statement_id),
                                     node=_statement(r)) for r in rows[:limit]]
    return SettlementStatementConnection(edges=edges, page_info=PageInfo(
        has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None))
