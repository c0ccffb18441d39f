"""Network APIs a partner's credential calls through GraphQL, metered against its agreement
(ADR 0015), and the agreement's metered usage."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry
from graphql import GraphQLError
from prometheus_client import Counter
from strawberry.types import Info

from tollgate_api.common import graphql_error, keyset, keyset_cursor, page_size, user_error
from tollgate_api.context import Context
from tollgate_api.types import (
    ConflictError,
    ForbiddenError,
    Long,
    Money,
    NotFoundError,
    PageInfo,
    ValidationError,
)
from tollgate_core import network_api_service
from tollgate_core.domain.errors import DomainError, Forbidden, Invalid
from tollgate_core.domain.network_api import QodRequest, QuotaExceeded, RateLimited
from tollgate_core.domain.network_api import QosProfile as DomainQosProfile
from tollgate_core.store import catalog_repo, network_api_repo
from tollgate_core.store.db import tenant_tx

NETWORK_API_CALLS = Counter(
    "tollgate_network_api_calls_total",
    "Partner network API calls by outcome (charged, repeat, forbidden, quotaExceeded, "
    "rateLimited, invalid)", ["tenant", "api", "outcome"])


@strawberry.enum(description="CAMARA Quality-on-Demand QoS profiles.")
class QosProfile(Enum):
    QOS_E = "QOS_E"
    QOS_S = "QOS_S"
    QOS_M = "QOS_M"
    QOS_L = "QOS_L"


@strawberry.type(description="A Quality-on-Demand session request, passed to the network "
                 "(OSS) side, which sets the session up.")
class QualityOnDemandSession:
    session_id: uuid.UUID
    call_id: uuid.UUID = strawberry.field(description="The metered call (see `partner.usage`).")
    requested_at: datetime
    charge: Money = strawberry.field(description="What the call costs the partner.")
    repeated: bool = strawberry.field(description="True when this repeats an earlier call "
                                      "with the same idempotencyKey: not counted or charged "
                                      "again.")


@strawberry.type(description="The agreement's monthly quota of this network API is used up.")
class QuotaExceededError:
    code: str
    message: str
    field: str | None
    quota: int = strawberry.field(graphql_type=Long)
    resets_at: datetime = strawberry.field(description="Start of the next calendar month in "
                                           "the tenant's timezone.")


RequestQualityOnDemandResult = Annotated[
    QualityOnDemandSession | ValidationError | NotFoundError | ConflictError | ForbiddenError
    | QuotaExceededError, strawberry.union("RequestQualityOnDemandResult")]


def _partner_agreement(ctx: Context) -> str:
    agreement = ctx.principal.agreement
    if agreement is None:
        raise Forbidden("network APIs are called with a partner's API key")
    return agreement


def rate_limited(exc: RateLimited) -> GraphQLError:
    """Answered as HTTP 429 with Retry-After (the HTTP endpoint looks for this code)."""
    return GraphQLError(exc.message, extensions={
        "code": exc.code, "retryAfter": exc.retry_after_s, "limitPerSecond": exc.limit})


async def request_quality_on_demand(
        info: Info[Context, None], msisdn: str, profile: QosProfile, duration_seconds: int,
        idempotency_key: str) -> RequestQualityOnDemandResult:
    """CAMARA-style QoD: record a session request, ask the network for it, meter the call."""
    ctx = info.context
    api = "qod"
    try:
        agreement = _partner_agreement(ctx)
        session = await network_api_service.request_quality_on_demand(
            ctx.pool, ctx.tenant, agreement,
            QodRequest(msisdn, DomainQosProfile(profile.value), duration_seconds),
            idempotency_key, ctx.clock())
    except RateLimited as exc:
        NETWORK_API_CALLS.labels(ctx.tenant, api, "rateLimited").inc()
        raise rate_limited(exc) from exc
    except QuotaExceeded as exc:
        NETWORK_API_CALLS.labels(ctx.tenant, api, "quotaExceeded").inc()
        return QuotaExceededError(code=exc.code, message=exc.message, field=None,
                                  quota=exc.quota, resets_at=exc.resets_at)
    except DomainError as exc:
        outcome = "forbidden" if isinstance(exc, Forbidden) else "invalid"
        NETWORK_API_CALLS.labels(ctx.tenant, api, outcome).inc()
        return user_error(exc)
    NETWORK_API_CALLS.labels(ctx.tenant, api, "repeat" if session.repeated else "charged").inc()
    return QualityOnDemandSession(
        session_id=session.session_id, call_id=session.call_id,
        requested_at=session.requested_at, repeated=session.repeated,
        charge=Money(amount_micros=session.price_micros, currency=session.currency))


# ------------------------------------------------------------------ usage


@strawberry.type(description="One metered network API call.")
class NetworkApiCall:
    id: uuid.UUID
    api: str = strawberry.field(description="The agreement's `networkApis[].name`.")
    operation: str = strawberry.field(description="The GraphQL field called.")
    called_at: datetime
    charge: Money
    catalog_revision: int = strawberry.field(description="The revision that priced the call.")
    session_id: uuid.UUID | None
    call_of_month: int | None = strawberry.field(
        graphql_type=Long | None, description="The call's number in its calendar month (tenant "
        "timezone), from 0: it picked the price tier. Null for calls metered before tiers "
        "existed.")
    statement_id: uuid.UUID | None = strawberry.field(
        description="The settlement statement that settled the call's charge; null until "
        "then.")


@strawberry.type
class NetworkApiCallEdge:
    cursor: str
    node: NetworkApiCall


@strawberry.type
class NetworkApiCallConnection:
    edges: list[NetworkApiCallEdge]
    page_info: PageInfo


@strawberry.type(description="Calls and charges of one network API.")
class NetworkApiUsageLine:
    api: str
    calls: int = strawberry.field(graphql_type=Long)
    charge: Money


@strawberry.type(description="Metered network API calls of an agreement in [from, to).")
class NetworkApiUsage:
    from_: datetime = strawberry.field(name="from")
    to: datetime
    calls: int = strawberry.field(graphql_type=Long, description="Calls in the period.")
    charge: Money = strawberry.field(description="Their charges, as booked in the ledger.")
    by_api: list[NetworkApiUsageLine]
    agreement: strawberry.Private[str]

    @strawberry.field(description="The calls, newest first.")
    async def records(self, info: Info[Context, None], first: int = 20,
                      after: str | None = None) -> NetworkApiCallConnection:
        ctx = info.context
        limit = page_size(first)
        async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
            rows = await network_api_repo.call_page(conn, self.agreement, self.from_, self.to,
                                                    limit + 1, keyset(after))
        edges = [NetworkApiCallEdge(
            cursor=keyset_cursor(r.called_at, r.call_id),
            node=NetworkApiCall(id=r.call_id, api=r.api, operation=r.operation,
                                called_at=r.called_at, catalog_revision=r.catalog_revision,
                                session_id=r.session_id, call_of_month=r.month_call,
                                statement_id=r.statement_id,
                                charge=Money(amount_micros=r.price_micros,
                                             currency=r.currency)))
            for r in rows[:limit]]
        return NetworkApiCallConnection(edges=edges, page_info=PageInfo(
            has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None))


async def agreement_usage(ctx: Context, agreement: str, start: datetime,
                          end: datetime) -> NetworkApiUsage:
    """Called for an agreement the caller may see (the `partner` field checked that)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise graphql_error(Invalid("from and to need a UTC offset", field="from"))
    if not start < end:
        raise graphql_error(Invalid("from must be before to", field="from"))
    async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
        lines = await network_api_repo.usage_lines(conn, agreement, start, end)
        tenant = await catalog_repo.get_tenant(conn, ctx.tenant)
    currency = tenant.currency if tenant is not None else (lines[0].currency if lines else "")
    return NetworkApiUsage(
        from_=start, to=end, agreement=agreement,
        calls=sum(line.calls for line in lines),
        charge=Money(amount_micros=sum(line.charge_micros for line in lines
                                       if line.currency == currency), currency=currency),
        by_api=[NetworkApiUsageLine(api=line.api, calls=line.calls,
                                    charge=Money(amount_micros=line.charge_micros,
                                                 currency=line.currency))
                for line in lines])
