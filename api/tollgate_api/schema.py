"""The GraphQL schema: queries and mutations over the caller's tenant."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

import strawberry
from strawberry.extensions import (
    DisableIntrospection,
    MaskErrors,
    ParserCache,
    SchemaExtension,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from tollgate_api.assurance import ASSURANCE_DESCRIPTION, Assurance, resolve_assurance
from tollgate_api.common import (
    MAX_PAGE,
    cursor,
    graphql_error,
    is_internal,
    keyset,
    keyset_cursor,
    page_size,
    uncursor,
    user_error,
)
from tollgate_api.context import Context
from tollgate_api.customers import (
    Customer,
    CustomerConnection,
    CustomerEdge,
    load_customer,
    order_connection,
    order_from_data,
    order_view,
)
from tollgate_api.execution import ExecutionContext
from tollgate_api.fanout import operation_sink
from tollgate_api.invoices import (
    DatePeriod,
    Invoice,
    InvoiceKind,
    InvoiceState,
    load_invoice,
)
from tollgate_api.limits import ValidationCache, limit_extensions
from tollgate_api.network_apis import RequestQualityOnDemandResult, request_quality_on_demand
from tollgate_api.offers import offer_view
from tollgate_api.partners import PartnerAgreement, partner_view
from tollgate_api.types import (
    LONG_SCALAR,
    CancellationEffective,
    ConflictError,
    ConsentChannel,
    ConsentState,
    ForbiddenError,
    Long,
    Money,
    NotFoundError,
    Offer,
    OfferConnection,
    OfferEdge,
    Order,
    OrderConnection,
    PageInfo,
    ValidationError,
)
from tollgate_core import customer_service
from tollgate_core.domain.care import CancelEffect
from tollgate_core.domain.catalog import compile_offer
from tollgate_core.domain.errors import DomainError, Forbidden, Invalid, NotFound
from tollgate_core.store import care_repo, catalog_repo, queries
from tollgate_core.store.db import tenant_tx
from tollgate_core.store.queries import PageKey

T = TypeVar("T")


@strawberry.type
class Query:
    assurance: Assurance = strawberry.field(resolver=resolve_assurance,
                                            description=ASSURANCE_DESCRIPTION)

    @strawberry.field(description="Active offers of the caller's tenant, by name.")
    async def offers(self, info: Info[Context, None], first: int = 20, after: str | None = None,
                     channel: str | None = None, segment: str | None = None) -> OfferConnection:
        limit = page_size(first)
        start_after = uncursor(after)[0] if after else ""
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
        edges = [OfferEdge(cursor=cursor(o.id), node=o) for o in page[:limit]]
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

    @strawberry.field(description="An invoice or statement: a customer's own, any of the "
                      "tenant's for agents and admins (NOT_FOUND otherwise).")
    async def invoice(self, info: Info[Context, None], id: uuid.UUID) -> Invoice:
        return await load_invoice(info.context, id)

    @strawberry.field(description="The tenant's customers, newest first (agents and admins).")
    async def customers(self, info: Info[Context, None], first: int = 20,
                        after: str | None = None) -> CustomerConnection:
        ctx = info.context
        try:
            ctx.check_staff()
        except Forbidden as exc:
            raise graphql_error(exc) from exc
        limit = page_size(first)
        async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
            rows = await queries.customer_page(conn, limit + 1, keyset(after))
        for row in rows:  # already loaded: nested fields need not read them again
            ctx.loaders.customer.prime(row.customer_id, row)
        edges = [CustomerEdge(cursor=keyset_cursor(r.created_at, r.customer_id),
                              node=Customer.of(r)) for r in rows[:limit]]
        return CustomerConnection(edges=edges, page_info=PageInfo(
            has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None))

    @strawberry.field(description="Orders, newest first: a customer's own, or the tenant's "
                      "for agents and admins.")
    async def orders(self, info: Info[Context, None], first: int = 20,
                     after: str | None = None) -> OrderConnection:
        ctx = info.context
        try:
            scope = ctx.customer_scope()
        except Forbidden as exc:
            raise graphql_error(exc) from exc
        limit = page_size(first)
        if scope is not None:
            rows = await ctx.loaders.orders.load(PageKey(scope, limit + 1, keyset(after)))
        else:
            async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
                rows = await queries.order_page(conn, limit + 1, keyset(after))
        return order_connection(rows, limit)

    @strawberry.field(description="A partner agreement: a partner's credential sees its own "
                      "(no id needed); agents and admins name one by id.")
    async def partner(self, info: Info[Context, None],
                      id: str | None = None) -> PartnerAgreement:
        ctx = info.context
        principal = ctx.principal
        own = principal.agreement
        if own is not None:
            if id is not None and id != own:
                raise graphql_error(NotFound("partner agreement does not exist", field="id"))
            name = own
        elif principal.is_staff:
            if id is None:
                raise graphql_error(Invalid("name the partner agreement", field="id"))
            name = id
        else:
            raise graphql_error(Forbidden("this credential may not see partner agreements"))
        async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
            latest = await catalog_repo.latest_revision(conn, ctx.tenant)
        if latest is None or name not in latest.source.partners:
            raise graphql_error(NotFound("partner agreement does not exist", field="id"))
        return partner_view(name, latest.source.partners[name], latest.revision,
                            latest.source.tenant.currency)


@strawberry.input
class RegisterCustomerInput:
    name: str
    email: str
    payment_type: str = "postpaid"
    customer_type: str = "consumer"
    timezone: str | None = strawberry.field(
        default=None, description="IANA timezone the account is billed in, e.g. "
        "America/New_York: its bill cycle starts on the tenant's cycle day at local midnight "
        "there. Omitted: the tenant's timezone. An unknown zone is a VALIDATION error.")


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
    order: Order | None = strawberry.field(
        description="The order (null only for a repeat of a request made before orders were "
        "recorded).")
    customer: Customer


@strawberry.input
class TopUpInput:
    customer_id: uuid.UUID
    amount: str = strawberry.field(description="Decimal amount in major units, e.g. \"10.00\".")


@strawberry.type
class TopUpSuccess:
    balance: Money


@strawberry.type
class UpdateConsentSuccess:
    consent: ConsentState
    customer: Customer


@strawberry.type
class CancelSubscriptionSuccess:
    order: Order
    ends_at: datetime = strawberry.field(description="When the subscriptions end (or ended).")
    customer: Customer


@strawberry.type
class EraseCustomerSuccess:
    erased_at: datetime
    customer: Customer


@strawberry.type(description="Part of a payment settling one invoice.")
class PaymentAllocation:
    amount: Money
    invoice: Invoice = strawberry.field(description="The invoice as it stands now.")


@strawberry.type
class RecordPaymentSuccess:
    payment_reference: str
    amount: Money
    allocations: list[PaymentAllocation] = strawberry.field(
        description="The open invoices the payment settled, oldest due first.")
    unapplied: Money = strawberry.field(description="What no open invoice needed: it stays "
                                        "on the account as credit.")
    customer: Customer


Errors = ValidationError | NotFoundError | ConflictError | ForbiddenError
RegisterCustomerResult = Annotated[RegisterCustomerSuccess | Errors,
                                   strawberry.union("RegisterCustomerResult")]
PlaceOrderResult = Annotated[PlaceOrderSuccess | Errors, strawberry.union("PlaceOrderResult")]
TopUpResult = Annotated[TopUpSuccess | Errors, strawberry.union("TopUpResult")]
UpdateConsentResult = Annotated[UpdateConsentSuccess | Errors,
                                strawberry.union("UpdateConsentResult")]
CancelSubscriptionResult = Annotated[CancelSubscriptionSuccess | Errors,
                                     strawberry.union("CancelSubscriptionResult")]
EraseCustomerResult = Annotated[EraseCustomerSuccess | Errors,
                                strawberry.union("EraseCustomerResult")]
RecordPaymentResult = Annotated[RecordPaymentSuccess | Errors,
                                strawberry.union("RecordPaymentResult")]


@strawberry.type
class Mutation:
    request_quality_on_demand: RequestQualityOnDemandResult = strawberry.mutation(
        resolver=request_quality_on_demand,
        description="Partners (API key): ask the network for a CAMARA-style Quality-on-Demand "
        "session for a device; metered against the agreement's `qod` network API (FORBIDDEN "
        "without it, QUOTA_EXCEEDED beyond its monthly quota, HTTP 429 RATE_LIMITED beyond "
        "its calls per second) and charged its price per call. A repeat with the same "
        "idempotencyKey returns the first session and costs nothing.")

    @strawberry.mutation(description="Register a customer (agents and admins).")
    async def register_customer(self, info: Info[Context, None], input: RegisterCustomerInput,
                                idempotency_key: str) -> RegisterCustomerResult:
        ctx = info.context
        try:
            ctx.check_staff()
            customer_id = await customer_service.register_customer(
                ctx.pool, ctx.tenant, name=input.name, email=input.email,
                payment_type=input.payment_type, customer_type=input.customer_type,
                idempotency_key=idempotency_key, timezone=input.timezone)
        except DomainError as exc:
            return user_error(exc)
        return RegisterCustomerSuccess(customer=await load_customer(ctx, customer_id))

    @strawberry.mutation(description="Subscribe a customer's line to a plan or add-on "
                         "(recorded as an order).")
    async def place_order(self, info: Info[Context, None], input: PlaceOrderInput,
                          idempotency_key: str) -> PlaceOrderResult:
        ctx = info.context
        try:
            ctx.check_customer(input.customer_id)
            placed = await customer_service.order_offer(
                ctx.pool, ctx.tenant, customer_id=input.customer_id, offer=input.offer_id,
                subscriber=input.subscriber, idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        ctx.forget_reads()
        return PlaceOrderSuccess(
            subscription_id=placed.subscription_id,
            order=await _order(ctx, placed.order_id) if placed.order_id else None,
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
        ctx.forget_reads()
        return TopUpSuccess(balance=Money(amount_micros=balance, currency=spec.currency))

    @strawberry.mutation(description="Record consent decisions: each is a history row with "
                         "its time, channel and the credential that recorded it.")
    async def update_consent(self, info: Info[Context, None], customer_id: uuid.UUID,
                             channel: ConsentChannel, idempotency_key: str,
                             marketing: bool | None = None,
                             data_processing: bool | None = None) -> UpdateConsentResult:
        ctx = info.context
        try:
            ctx.check_customer(customer_id)
            await customer_service.update_consent(
                ctx.pool, ctx.tenant, customer_id=customer_id, marketing=marketing,
                data_processing=data_processing, channel=channel.value,
                recorded_by=ctx.principal.subject, idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        ctx.forget_reads()
        state = await ctx.loaders.consent.load(customer_id)
        return UpdateConsentSuccess(
            consent=ConsentState(marketing=state.marketing,
                                 data_processing=state.data_processing,
                                 updated_at=state.updated_at),
            customer=await load_customer(ctx, customer_id))

    @strawberry.mutation(description="Cancel a subscription now, or at the end of the bill "
                         "cycle (active until then). Cancelling a plan also cancels the add-ons "
                         "of its line. Recorded as a cancel order.")
    async def cancel_subscription(
            self, info: Info[Context, None], subscription_id: uuid.UUID, idempotency_key: str,
            effective: CancellationEffective = CancellationEffective.IMMEDIATE,
    ) -> CancelSubscriptionResult:
        ctx = info.context
        try:
            cancelled = await customer_service.cancel_subscription(
                ctx.pool, ctx.tenant, subscription_id=subscription_id,
                effect=CancelEffect(effective.value), only_customer=ctx.customer_scope(),
                idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        ctx.forget_reads()
        return CancelSubscriptionSuccess(
            order=await _order(ctx, cancelled.order_id), ends_at=cancelled.ends_at,
            customer=await load_customer(ctx, cancelled.customer_id))

    @strawberry.mutation(description="GDPR erasure (agents and admins): name, e-mail and the "
                         "customer's lines become irreversible pseudonyms; ledger, rated usage, "
                         "orders and consent history stay. Needs no active subscription.")
    async def erase_customer(self, info: Info[Context, None], customer_id: uuid.UUID,
                             idempotency_key: str) -> EraseCustomerResult:
        ctx = info.context
        try:
            ctx.check_staff()
            erased_at = await customer_service.erase_customer(
                ctx.pool, ctx.tenant, customer_id=customer_id,
                requested_by=ctx.principal.subject, idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        ctx.forget_reads()
        return EraseCustomerSuccess(erased_at=erased_at,
                                    customer=await load_customer(ctx, customer_id))

    @strawberry.mutation(description="Record a payment received for a customer (agents and "
                         "admins) and settle their open invoices with it, oldest due first; "
                         "the rest stays on the account as credit. `paymentReference` "
                         "identifies the payment (e.g. the bank's or gateway's reference): "
                         "recording it again changes nothing.")
    async def record_payment(self, info: Info[Context, None], customer_id: uuid.UUID,
                             amount: str, payment_reference: str,
                             idempotency_key: str) -> RecordPaymentResult:
        ctx = info.context
        try:
            ctx.check_staff()
            recorded = await customer_service.record_payment(
                ctx.pool, ctx.tenant, customer_id=customer_id, amount=amount,
                payment_reference=payment_reference, idempotency_key=idempotency_key)
        except DomainError as exc:
            return user_error(exc)
        ctx.forget_reads()
        rows = await ctx.loaders.invoice.load_many([i for i, _ in recorded.applied])
        settled = []
        for row, (_, micros) in zip(rows, recorded.applied, strict=True):
            assert row is not None, "an invoice a payment settled exists"
            settled.append((row, micros))
        settled.sort(key=lambda s: (s[0].due_date or s[0].bill_date, s[0].bill_no))
        allocations = [PaymentAllocation(invoice=Invoice.of(row), amount=Money(
            amount_micros=micros, currency=recorded.currency)) for row, micros in settled]
        return RecordPaymentSuccess(
            payment_reference=recorded.payment_reference,
            amount=Money(amount_micros=recorded.amount_micros, currency=recorded.currency),
            allocations=allocations,
            unapplied=Money(amount_micros=recorded.unapplied_micros,
                            currency=recorded.currency),
            customer=await load_customer(ctx, customer_id))


async def _order(ctx: Context, order_id: uuid.UUID) -> Order:
    async with tenant_tx(ctx.pool, ctx.tenant, readonly=True) as conn:
        row = await care_repo.get_order(conn, order_id)
    if row is None:
        raise graphql_error(NotFound("order does not exist"))
    return order_view(row)


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


@strawberry.type(description="An invoice or statement was issued (`evt.invoice.issued`).")
class InvoiceIssued:
    invoice_id: uuid.UUID
    bill_no: str
    kind: InvoiceKind
    customer_id: uuid.UUID
    billing_period: DatePeriod
    amount_due: Money
    tax_amount: Money
    payment_due_date: date | None
    state: InvoiceState

    @strawberry.field(description="The whole document (read when asked for).")
    async def invoice(self, info: Info[Context, None]) -> Invoice:
        return await load_invoice(info.context, self.invoice_id)


def _invoice_issued(data: dict[str, Any]) -> InvoiceIssued:
    currency = str(data["currency"])
    due = data.get("dueDate")
    return InvoiceIssued(
        invoice_id=uuid.UUID(data["invoiceId"]), bill_no=str(data["billNo"]),
        kind=InvoiceKind(data["kind"]), customer_id=uuid.UUID(data["customerId"]),
        billing_period=DatePeriod(start=date.fromisoformat(data["periodStart"]),
                                  end=date.fromisoformat(data["periodEnd"])),
        amount_due=Money(amount_micros=int(data["totalMicros"]), currency=currency),
        tax_amount=Money(amount_micros=int(data["taxMicros"]), currency=currency),
        payment_due_date=date.fromisoformat(due) if due else None,
        state=InvoiceState(data["state"]))


@strawberry.type(name="LiveUpdates", description="Subscriptions over graphql-transport-ws. "
                 "(The root type is not called Subscription: that name is the product "
                 "subscription's.)")
class LiveUpdates:
    @strawberry.subscription(description="Every change of a customer's balance.")
    async def balance_changed(self, info: Info[Context, None],
                              customer_id: uuid.UUID) -> AsyncGenerator[BalanceChange, None]:
        def change(data: dict[str, Any]) -> BalanceChange:
            return BalanceChange(customer_id=customer_id, cause=str(data.get("cause")),
                                 balance=Money(amount_micros=int(data["balanceMicros"]),
                                               currency=str(data["currency"])))

        async with aclosing(_customer_events(info, "balance.updated", customer_id,
                                             change)) as events:
            async for item in events:
                yield item

    @strawberry.subscription(description="Thresholds the customer crosses (upsell hints).")
    async def threshold_crossed(self, info: Info[Context, None], customer_id: uuid.UUID
                                ) -> AsyncGenerator[ThresholdCrossing, None]:
        def crossing(data: dict[str, Any]) -> ThresholdCrossing:
            return ThresholdCrossing(customer_id=customer_id, threshold=str(data["threshold"]),
                                     period_start=str(data["periodStart"]),
                                     upsell_offer=data.get("upsellOffer"))

        async with aclosing(_customer_events(info, "threshold.crossed", customer_id,
                                             crossing)) as events:
            async for item in events:
                yield item

    @strawberry.subscription(description="A customer's orders as they are placed and change.")
    async def order_updated(self, info: Info[Context, None], customer_id: uuid.UUID
                            ) -> AsyncGenerator[Order, None]:
        async with aclosing(_customer_events(info, "order.updated", customer_id,
                                             order_from_data)) as events:
            async for item in events:
                yield item

    @strawberry.subscription(description="Invoices and statements as bill runs issue them: "
                             "one customer's, or (agents and admins, without customerId) "
                             "every customer's of the tenant.")
    async def invoice_issued(self, info: Info[Context, None],
                             customer_id: uuid.UUID | None = None
                             ) -> AsyncGenerator[InvoiceIssued, None]:
        async with aclosing(_customer_events(info, "invoice.issued", customer_id,
                                             _invoice_issued)) as events:
            async for item in events:
                yield item


async def _customer_events(info: Info[Context, None], event: str,
                           customer_id: uuid.UUID | None, root: Callable[[dict[str, Any]], T]
                           ) -> AsyncGenerator[T, None]:
    """The root values (`root` of each event's `data`) of the caller's tenant's `event`s
    about one customer they may see; with no customer named, every customer the caller may
    see (a customer: themself). The caller is authorised here, once.

    Over graphql-transport-ws the operation is adopted by a shared feed instead
    (`tollgate_api.fanout`): nothing is yielded here, the feed sends the results."""
    ctx = info.context
    try:
        if customer_id is None:
            scope = ctx.customer_scope()
        else:
            ctx.check_customer(customer_id)
            scope = customer_id
    except Forbidden as exc:
        raise graphql_error(exc) from exc
    wanted = None if scope is None else str(scope)
    sink = operation_sink()
    if sink is not None:
        sink.adopt(info, event, wanted, root)
        return
    async with ctx.hub.listen(ctx.tenant, event, wanted) as queue:
        while True:
            yield root(await queue.get())


class RequestScope(SchemaExtension):
    """Per operation: start with empty DataLoaders (a websocket connection runs many
    operations), and end their reads' transaction with the operation. Credentials, API keys
    included, are resolved before execution (HTTP: `GraphQLHTTP`, websockets:
    `connection_init`)."""

    async def on_operation(self) -> AsyncIterator[None]:
        ctx = self.execution_context.context
        if isinstance(ctx, Context):
            ctx.forget_reads()
        yield
        if isinstance(ctx, Context):
            ctx.forget_reads()


DEPTH_MAX = 10
ALIASES_MAX = 30
TOKENS_MAX = 2_000
COMPLEXITY_MAX = 25_000
"""The customer dashboard (profile, balances, 20 usage records, 3 invoices with lines) costs
about 1,000, an agent's list of 10 customers with their usage, orders and invoices about
18,000; 100 customers with 100 usage records each would cost over 100,000."""
DEFAULT_PAGE = 20


def build_schema(introspection: bool = True) -> strawberry.Schema:
    """Limits bound what one request may ask for; parsing and validation are cached."""
    validated: OrderedDict[Any, Any] = OrderedDict()
    extensions: list[Any] = [
        RequestScope,
        *limit_extensions(DEPTH_MAX, ALIASES_MAX, TOKENS_MAX, COMPLEXITY_MAX,
                          DEFAULT_PAGE, MAX_PAGE),  # before the caches
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(validated, maxsize=256),
        lambda: MaskErrors(should_mask_error=is_internal),
    ]
    if not introspection:
        extensions.append(DisableIntrospection)
    return strawberry.Schema(
        query=Query, mutation=Mutation, subscription=LiveUpdates,
        extensions=extensions,
        config=StrawberryConfig(scalar_map={Long: LONG_SCALAR}),
        execution_context_class=ExecutionContext,
    )

