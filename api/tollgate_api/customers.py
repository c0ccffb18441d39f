"""The Customer type and its lists: every field is read through the request's DataLoaders."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from tollgate_api.common import graphql_error, keyset, keyset_cursor, page_size
from tollgate_api.context import Context
from tollgate_api.invoices import InvoiceConnection, invoice_connection
from tollgate_api.types import (
    Allowance,
    Balance,
    ConsentChannel,
    ConsentPurpose,
    ConsentRecord,
    ConsentRecordConnection,
    ConsentRecordEdge,
    ConsentState,
    Money,
    Order,
    OrderConnection,
    OrderEdge,
    OrderItem,
    OrderItemAction,
    OrderState,
    OrderType,
    PageInfo,
    RatedUsage,
    RatedUsageConnection,
    RatedUsageEdge,
    Subscription,
)
from tollgate_core.domain.errors import Forbidden, NotFound
from tollgate_core.store.accounts_repo import CustomerRow
from tollgate_core.store.care_repo import OrderRow
from tollgate_core.store.queries import PageKey


def _page_key(owner: uuid.UUID, first: int, after: str | None) -> PageKey:
    """One more row than asked for tells whether there is a next page."""
    return PageKey(owner, page_size(first) + 1, keyset(after))


def _page_info(rows: int, limit: int, end_cursor: str | None) -> PageInfo:
    return PageInfo(has_next_page=rows > limit, end_cursor=end_cursor)


@strawberry.type(description="A customer of the tenant (personal data lives only here).")
class Customer:
    id: uuid.UUID
    name: str | None = strawberry.field(description="A pseudonym once the customer is erased.")
    email: str | None = strawberry.field(description="A pseudonym once the customer is erased.")
    customer_type: str
    payment_type: str
    created_at: datetime
    erased_at: datetime | None = strawberry.field(
        description="When the customer's personal data was erased (GDPR), if it was.")
    own_timezone: strawberry.Private[str | None] = None

    @classmethod
    def of(cls, row: CustomerRow) -> Customer:
        return cls(id=row.customer_id, name=row.name, email=row.email,
                   customer_type=row.customer_type, payment_type=row.payment_type,
                   created_at=row.created_at, erased_at=row.erased_at,
                   own_timezone=row.timezone)

    @strawberry.field(description="The IANA timezone the account is billed in: its bill cycle "
                      "starts on the tenant's cycle day at local midnight there, and its "
                      "proration days and usage periods are its local days. The account's "
                      "own (set at registration) or else the tenant's.")
    async def timezone(self, info: Info[Context, None]) -> str:
        if self.own_timezone is not None:
            return self.own_timezone
        spec = await info.context.loaders.tenant_spec.load(info.context.tenant)
        return spec.timezone if spec is not None else "UTC"

    @strawberry.field(description="Whether `timezone` is the account's own (true) or the "
                      "tenant's (false).")
    def has_own_timezone(self) -> bool:
        return self.own_timezone is not None

    @strawberry.field(description="Plans and add-ons, oldest first.")
    async def subscriptions(self, info: Info[Context, None]) -> list[Subscription]:
        rows = await info.context.loaders.subscriptions.load(self.id)
        return [Subscription(id=r.subscription_id, offer_id=r.offer, subscriber=r.subscriber,
                             status=r.status, catalog_revision=r.catalog_revision,
                             started_at=r.started_at, ends_at=r.ended_at) for r in rows]

    @strawberry.field
    async def balance(self, info: Info[Context, None]) -> Balance | None:
        row = await info.context.loaders.balance.load(self.id)
        if row is None:
            return None
        return Balance(balance=Money(amount_micros=row.balance_micros, currency=row.currency),
                       overage=Money(amount_micros=row.owed_micros, currency=row.currency))

    @strawberry.field(description="Allowances of active subscriptions, current period.")
    async def allowances(self, info: Info[Context, None]) -> list[Allowance]:
        rows = await info.context.loaders.allowances.load(self.id)
        return [Allowance(subscription_id=r.subscription_id, name=r.allowance,
                          period_start=r.period_start, quantity=r.quantity, used=r.used)
                for r in rows]

    @strawberry.field(description="Rated usage, newest first.")
    async def usage(self, info: Info[Context, None], first: int = 20,
                    after: str | None = None) -> RatedUsageConnection:
        key = _page_key(self.id, first, after)
        rows = await info.context.loaders.usage.load(key)
        edges = [RatedUsageEdge(cursor=keyset_cursor(r.start_time, r.event_id),
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
                 for r in rows[:first]]
        return RatedUsageConnection(edges=edges, page_info=_page_info(
            len(rows), first, edges[-1].cursor if edges else None))

    @strawberry.field(description="Orders, newest first.")
    async def orders(self, info: Info[Context, None], first: int = 20,
                     after: str | None = None) -> OrderConnection:
        rows = await info.context.loaders.orders.load(_page_key(self.id, first, after))
        return order_connection(rows, first)

    @strawberry.field(description="Invoices and statements, newest bill period first.")
    async def invoices(self, info: Info[Context, None], first: int = 20,
                       after: str | None = None) -> InvoiceConnection:
        return await invoice_connection(info.context, self.id, first, after)

    @strawberry.field(description="Current consent per purpose.")
    async def consent(self, info: Info[Context, None]) -> ConsentState:
        state = await info.context.loaders.consent.load(self.id)
        return ConsentState(marketing=state.marketing, data_processing=state.data_processing,
                            updated_at=state.updated_at)

    @strawberry.field(description="Every consent decision, newest first.")
    async def consent_history(self, info: Info[Context, None], first: int = 20,
                              after: str | None = None) -> ConsentRecordConnection:
        rows = await info.context.loaders.consent_history.load(_page_key(self.id, first, after))
        edges = [ConsentRecordEdge(cursor=keyset_cursor(r.recorded_at, r.record_id),
                                   node=ConsentRecord(id=r.record_id,
                                                      purpose=ConsentPurpose(r.purpose),
                                                      granted=r.granted,
                                                      channel=ConsentChannel(r.channel),
                                                      recorded_by=r.recorded_by,
                                                      recorded_at=r.recorded_at))
                 for r in rows[:first]]
        return ConsentRecordConnection(edges=edges, page_info=_page_info(
            len(rows), first, edges[-1].cursor if edges else None))


@strawberry.type
class CustomerEdge:
    cursor: str
    node: Customer


@strawberry.type
class CustomerConnection:
    edges: list[CustomerEdge]
    page_info: PageInfo


def order_view(row: OrderRow) -> Order:
    return order_from_data(row.event_data())


def order_from_data(data: dict[str, Any]) -> Order:
    """From the `order.updated` payload, which is also what the API shows of a stored order."""
    due = data.get("dueAt")
    return Order(id=uuid.UUID(data["orderId"]), customer_id=uuid.UUID(data["customerId"]),
                 type=OrderType(data["type"]), state=OrderState(data["state"]),
                 items=[OrderItem(action=OrderItemAction(i["action"]), offer_id=i["offerId"],
                                  subscription_id=uuid.UUID(i["subscriptionId"]))
                        for i in data["items"]],
                 due_at=datetime.fromisoformat(due) if due else None,
                 created_at=datetime.fromisoformat(data["createdAt"]),
                 updated_at=datetime.fromisoformat(data["updatedAt"]))


def order_connection(rows: list[OrderRow], first: int) -> OrderConnection:
    edges = [OrderEdge(cursor=keyset_cursor(r.created_at, r.order_id), node=order_view(r))
             for r in rows[:first]]
    return OrderConnection(edges=edges, page_info=_page_info(
        len(rows), first, edges[-1].cursor if edges else None))


async def load_customer(context: Context, customer_id: uuid.UUID) -> Customer:
    """The customer, if the caller may see them: FORBIDDEN or NOT_FOUND otherwise."""
    try:
        context.check_customer(customer_id)
    except Forbidden as exc:
        raise graphql_error(exc) from exc
    row = await context.loaders.customer.load(customer_id)
    if row is None:
        raise graphql_error(NotFound("customer does not exist", field="id"))
    return Customer.of(row)
