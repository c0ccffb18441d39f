"""The GraphQL schema: queries and mutations over the caller's tenant."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated, Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from tollgate_api.context import Context
from tollgate_api.offers import offer_view
from tollgate_api.types import (
    LONG_SCALAR,
    Allowance,
    Balance,
    ConflictError,
    ForbiddenError,
    Long,
    Money,
    NotFoundError,
    Offer,
    OfferConnection,
    OfferEdge,
    PageInfo,
    RatedUsage,
    RatedUsageConnection,
    RatedUsageEdge,
    Subscription,
    UserError,
    ValidationError,
)
from tollgate_core import customer_service
from tollgate_core.domain.catalog import compile_offer
from tollgate_core.domain.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from tollgate_core.store import accounts_repo, catalog_repo, queries
from tollgate_core.store.db import tenant_tx

MAX_PAGE = 100


def graphql_error(error: DomainError) -> GraphQLError:
    """Expected errors keep their message and carry a stable code and the field."""
    return GraphQLError(error.message, extensions={"code": error.code, "field": error.field})


def user_error(error: DomainError) -> UserError:
    kinds: dict[type[DomainError], type] = {Invalid: ValidationError, NotFound: NotFoundError,
                                            Conflict: ConflictError, Forbidden: ForbiddenError}
    kind = kinds.get(type(error), ValidationError)
    result: UserError = kind(code=error.code, message=error.message, field=error.field)
    return result


def _page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise graphql_error(Invalid(f"first must be between 1 and {MAX_PAGE}", field="first"))
    return first


def _cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode()


def _uncursor(cursor: str) -> list[str]:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    except (ValueError, UnicodeDecodeError) as exc:
        raise graphql_error(Invalid("malformed cursor", field="after")) from exc


@strawberry.type(description="A customer of the tenant (personal data lives only here).")
class Customer:
    id: uuid.UUID
    name: str | None
    email: str | None
    customer_type: str
    payment_type: str
    created_at: datetime

    @strawberry.field
    async def subscriptions(self, info: Info[Context, None]) -> list[Subscription]:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            rows = await accounts_repo.list_subscriptions(conn, self.id)
        return [Subscription(id=r.subscription_id, offer_id=r.offer, subscriber=r.subscriber,
                             status=r.status, catalog_revision=r.catalog_revision,
                             started_at=r.started_at) for r in rows]

    @strawberry.field
    async def balance(self, info: Info[Context, None]) -> Balance | None:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            row = await queries.balance(conn, self.id)
        if row is None:
            return None
        return Balance(balance=Money(amount_micros=row.balance_micros, currency=row.currency),
                       overage=Money(amount_micros=row.owed_micros, currency=row.currency))

    @strawberry.field(description="Allowances of active subscriptions, current period.")
    async def allowances(self, info: Info[Context, None]) -> list[Allowance]:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            rows = await queries.current_allowances(conn, self.id)
        return [Allowance(subscription_id=r.subscription_id, name=r.allowance,
                          period_start=r.period_start, quantity=r.quantity, used=r.used)
                for r in rows]

    @strawberry.field(description="Rated usage, newest first.")
    async def usage(self, info: Info[Context, None], first: int = 20,
                    after: str | None = None) -> RatedUsageConnection:
        limit = _page_size(first)
        before = None
        if after is not None:
            start, event_id = _uncursor(after)
            before = (datetime.fromisoformat(start), uuid.UUID(event_id))
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            rows = await queries.rated_usage(conn, self.id, limit + 1, before)
        edges = [RatedUsageEdge(cursor=_cursor(r.start_time.isoformat(), str(r.event_id)),
                                node=RatedUsage(
                                    event_id=r.event_id, subscription_id=r.subscription_id,
                                    service=r.service, quantity=r.quantity,
                                    allowance_units=r.allowance_units,
                                    chargeable_units=r.chargeable_units,
                                    charge=Money(amount_micros=r.amount_micros,
                                                 currency=r.currency),
                                    price_name=r.price_name,
                                    catalog_revision=r.catalog_revision,
                                    start_time=r.start_time))
                 for r in rows[:limit]]
        return RatedUsageConnection(edges=edges, page_info=PageInfo(
            has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None))


async def load_customer(context: Context, customer_id: uuid.UUID) -> Customer:
    try:
        context.check_customer(customer_id)
    except Forbidden as exc:
        raise graphql_error(exc) from exc
    async with tenant_tx(context.pool, context.tenant, readonly=True) as conn:
        row = await accounts_repo.get_customer(conn, customer_id)
    if row is None:
        raise graphql_error(NotFound("customer does not exist", field="id"))
    return Customer(id=row.customer_id, name=row.name, email=row.email,
                    customer_type=row.customer_type, payment_type=row.payment_type,
                    created_at=row.created_at)


@strawberry.type
class Query:
    @strawberry.field(description="Active offers of the caller's tenant, by name.")
    async def offers(self, info: Info[Context, None], first: int = 20, after: str | None = None,
                     channel: str | None = None, segment: str | None = None) -> OfferConnection:
        limit = _page_size(first)
        start_after = _uncursor(after)[0] if after else ""
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            latest = await catalog_repo.latest_revision(conn, info.context.tenant)
        if latest is None:
            return OfferConnection(edges=[], page_info=PageInfo(has_next_page=False,
                                                                end_cursor=None), total_count=0)
        now = datetime.now().astimezone()
        sellable = []
        for name, spec in sorted(latest.source.offers.items()):
            compiled = compile_offer(name, spec)
            if not compiled.sellable_at(now):
                continue
            if channel and compiled.channels and channel not in compiled.channels:
                continue
            if segment and compiled.segments and segment not in compiled.segments:
                continue
            sellable.append(offer_view(compiled, latest.source.tenant.currency, latest.revision))
        page = [o for o in sellable if o.id > start_after]
        edges = [OfferEdge(cursor=_cursor(o.id), node=o) for o in page[:limit]]
        return OfferConnection(edges=edges, total_count=len(sellable), page_info=PageInfo(
            has_next_page=len(page) > limit, end_cursor=edges[-1].cursor if edges else None))

    @strawberry.field
    async def offer(self, info: Info[Context, None], id: str) -> Offer | None:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            latest = await catalog_repo.latest_revision(conn, info.context.tenant)
        if latest is None or id not in latest.source.offers:
            return None
        return offer_view(compile_offer(id, latest.source.offers[id]),
                          latest.source.tenant.currency, latest.revision)

    @strawberry.field(description="The authenticated customer.")
    async def me(self, info: Info[Context, None]) -> Customer:
        try:
            customer_id = uuid.UUID(info.context.principal.subject)
        except ValueError as exc:
            raise graphql_error(NotFound("the credential is not a customer's")) from exc
        return await load_customer(info.context, customer_id)

    @strawberry.field(description="A customer by id (agents; customers only themself).")
    async def customer(self, info: Info[Context, None], id: uuid.UUID) -> Customer:
        return await load_customer(info.context, id)


@strawberry.input
class RegisterCustomerInput:
    name: str
    email: str
    payment_type: str = "postpaid"
    customer_type: str = "consumer"


@strawberry.type
class RegisterCustomerSuccess:
    customer: Customer


@strawberry.input
class PlaceOrderInput:
    customer_id: uuid.UUID
    offer_id: str
    subscriber: str = strawberry.field(description="The line (MSISDN) the offer is for.")


@strawberry.type
class PlaceOrderSuccess:
    subscription_id: uuid.UUID
    customer: Customer


@strawberry.input
class TopUpInput:
    customer_id: uuid.UUID
    amount: str = strawberry.field(description="Decimal amount in major units, e.g. \"10.00\".")


@strawberry.type
class TopUpSuccess:
    balance: Money


RegisterCustomerResult = Annotated[RegisterCustomerSuccess | ValidationError | NotFoundError
                                   | ConflictError | ForbiddenError,
                                   strawberry.union("RegisterCustomerResult")]
PlaceOrderResult = Annotated[PlaceOrderSuccess | ValidationError | NotFoundError
                             | ConflictError | ForbiddenError,
                             strawberry.union("PlaceOrderResult")]
TopUpResult = Annotated[TopUpSuccess | ValidationError | NotFoundError | ConflictError
                        | ForbiddenError, strawberry.union("TopUpResult")]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Register a customer (agents and admins).")
    async def register_customer(self, info: Info[Context, None], input: RegisterCustomerInput,
                                idempotency_key: str) -> RegisterCustomerResult:
        ctx = info.context
        try:
            ctx.check_staff()
            customer_id = await customer_service.register_customer(
                ctx.pool, ctx.tenant, name=input.name, email=input.email,
                payment_type=input.payment_type, customer_type=input.customer_type,
                idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        return RegisterCustomerSuccess(customer=await load_customer(ctx, customer_id))

    @strawberry.mutation(description="Subscribe a customer's line to a plan or add-on.")
    async def place_order(self, info: Info[Context, None], input: PlaceOrderInput,
                          idempotency_key: str) -> PlaceOrderResult:
        ctx = info.context
        try:
            ctx.check_customer(input.customer_id)
            subscription_id = await customer_service.place_order(
                ctx.pool, ctx.tenant, customer_id=input.customer_id, offer=input.offer_id,
                subscriber=input.subscriber, idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        return PlaceOrderSuccess(subscription_id=subscription_id,
                                 customer=await load_customer(ctx, input.customer_id))

    @strawberry.mutation(description="Add prepaid credit to a customer's balance.")
    async def top_up(self, info: Info[Context, None], input: TopUpInput,
                     idempotency_key: str) -> TopUpResult:
        ctx = info.context
        try:
            ctx.check_customer(input.customer_id)
            async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
                spec = await catalog_repo.get_tenant(conn, ctx.tenant)
            balance = await customer_service.top_up(
                ctx.pool, ctx.tenant, customer_id=input.customer_id, amount=input.amount,
                idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        assert spec is not None
        return TopUpSuccess(balance=Money(amount_micros=balance, currency=spec.currency))


@strawberry.type(description="A customer's balance after a change.")
class BalanceChange:
    customer_id: uuid.UUID
    balance: Money
    cause: str


@strawberry.type(description="A usage or balance threshold was crossed.")
class ThresholdCrossing:
    customer_id: uuid.UUID
    threshold: str
    period_start: str
    upsell_offer: str | None


@strawberry.type(name="LiveUpdates", description="Subscriptions over graphql-transport-ws. "
                 "(The root type is not called Subscription: that name is the product "
                 "subscription's.)")
class LiveUpdates:
    @strawberry.subscription(description="Every change of a customer's balance.")
    async def balance_changed(self, info: Info[Context, None],
                              customer_id: uuid.UUID) -> AsyncGenerator[BalanceChange, None]:
        async for data in _customer_events(info.context, "balance.updated", customer_id):
            yield BalanceChange(customer_id=customer_id, cause=str(data.get("cause")),
                                balance=Money(amount_micros=int(data["balanceMicros"]),
                                              currency=str(data["currency"])))

    @strawberry.subscription(description="Thresholds the customer crosses (upsell hints).")
    async def threshold_crossed(self, info: Info[Context, None], customer_id: uuid.UUID
                                ) -> AsyncGenerator[ThresholdCrossing, None]:
        async for data in _customer_events(info.context, "threshold.crossed", customer_id):
            yield ThresholdCrossing(customer_id=customer_id, threshold=str(data["threshold"]),
                                    period_start=str(data["periodStart"]),
                                    upsell_offer=data.get("upsellOffer"))


async def _customer_events(ctx: Context, event: str, customer_id: uuid.UUID
                           ) -> AsyncGenerator[dict[str, Any], None]:
    """The `data` of the caller's tenant's `event`s about one customer they may see."""
    try:
        ctx.check_customer(customer_id)
    except Forbidden as exc:
        raise graphql_error(exc) from exc
    async with ctx.hub.listen(ctx.tenant, event) as queue:
        while True:
            data = await queue.get()
            if data.get("customerId") == str(customer_id):
                yield data


DEPTH_MAX = 10
ALIASES_MAX = 30
TOKENS_MAX = 2_000


def build_schema(introspection: bool = True) -> strawberry.Schema:
    """Limits bound what one request may ask for; parsing and validation are cached."""
    extensions: list[Any] = [
        lambda: QueryDepthLimiter(max_depth=DEPTH_MAX),
        lambda: MaxAliasesLimiter(max_alias_count=ALIASES_MAX),
        lambda: MaxTokensLimiter(max_token_count=TOKENS_MAX),
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
        lambda: MaskErrors(should_mask_error=_is_internal),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(
        query=Query, mutation=Mutation, subscription=LiveUpdates,
        extensions=extensions,
        config=StrawberryConfig(scalar_map={Long: LONG_SCALAR}),
    )


def _is_internal(error: GraphQLError) -> bool:
    """Mask everything but errors we raised on purpose (they carry extensions.code)."""
    deliberate = bool(error.extensions and "code" in error.extensions)
    return not deliberate and error.original_error is not None
