"""Invoices and statements (TMF678 CustomerBill names where they exist), read through the
request's DataLoaders: a page of documents, their lines and the rendered HTML cost one batch
each, however many customers and documents a request shows."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import date
from enum import Enum

import strawberry
from strawberry.types import Info

from tollgate_api.common import cursor, graphql_error, page_size, uncursor
from tollgate_api.context import Context
from tollgate_api.types import Long, Money, PageInfo
from tollgate_core.billing import documents
from tollgate_core.domain.errors import Forbidden, Invalid, NotFound
from tollgate_core.store.queries import InvoiceLineRow, InvoicePageKey, InvoiceRow


@strawberry.enum(description="What kind of document: an invoice (postpaid, to be paid) or a "
                 "statement (prepaid, already settled from the balance).")
class InvoiceKind(Enum):
    INVOICE = "invoice"
    STATEMENT = "statement"


@strawberry.enum(description="Where a document's settlement stands; its content never changes.")
class InvoiceState(Enum):
    NEW = "new"
    ISSUED = "issued"
    PARTIALLY_PAID = "partiallyPaid"
    PAID = "paid"
    OVERDUE = "overdue"
    SETTLED = "settled"


@strawberry.enum(description="What a line charges.")
class BillingRateType(Enum):
    RECURRING = "recurring"
    ONE_TIME = "oneTime"
    USAGE = "usage"
    DISCOUNT = "discount"


@strawberry.type(description="Local calendar days [start, end) in the account's timezone "
                 "(`Customer.timezone`): `end` is the first day after the period.")
class DatePeriod:
    start: date
    end: date


@strawberry.type(description="Tax of one category and rate on a document.")
class TaxItem:
    tax_category: str
    tax_rate: str = strawberry.field(description="Percent, an exact decimal (e.g. \"19\").")
    tax_amount: Money
    taxable_amount: Money = strawberry.field(description="Net amount the tax is on.")


@strawberry.type(description="One line of a document (TMF678 AppliedCustomerBillingRate), "
                 "rounded half-even to the currency's minor unit.")
class AppliedCustomerBillingRate:
    id: str
    type: BillingRateType
    name: str
    quantity: int = strawberry.field(graphql_type=Long, description="Usage: units in the "
                                     "service's unit; recurring fee: days in service of "
                                     "the coverage period; otherwise 1.")
    period_coverage: DatePeriod | None = strawberry.field(
        description="The bill cycle a recurring fee covers.")
    catalog_revision: int = strawberry.field(description="Catalog revision that priced it.")
    offer_id: str
    price_name: str
    subscription_id: uuid.UUID | None
    net: Money
    tax: Money
    tax_rate: str = strawberry.field(description="Percent, an exact decimal (e.g. \"19\").")
    tax_category: str
    tax_inclusive: bool = strawberry.field(description="Whether the price included the tax.")


def _line(row: InvoiceLineRow, currency: str) -> AppliedCustomerBillingRate:
    coverage = (DatePeriod(start=row.coverage_start, end=row.coverage_end)
                if row.coverage_start is not None and row.coverage_end is not None else None)
    return AppliedCustomerBillingRate(
        id=f"{row.invoice_id}-{row.line_no}", type=BillingRateType(row.kind),
        name=row.description, quantity=row.quantity, period_coverage=coverage,
        catalog_revision=row.catalog_revision, offer_id=row.offer, price_name=row.price_name,
        subscription_id=row.subscription_id,
        net=Money(amount_micros=row.net_micros, currency=currency),
        tax=Money(amount_micros=row.tax_micros, currency=currency),
        tax_rate=row.tax_rate, tax_category=row.tax_category,
        tax_inclusive=row.tax_inclusive)


@strawberry.type(description="An invoice or statement (TMF678 CustomerBill). Issued documents "
                 "are immutable: payments and credit notes move only `state` and "
                 "`remainingAmount`.")
class Invoice:
    id: uuid.UUID
    bill_no: str = strawberry.field(description="Gapless per tenant and series.")
    kind: InvoiceKind
    customer_id: uuid.UUID
    bill_date: date
    billing_period: DatePeriod
    payment_due_date: date | None = strawberry.field(description="Null for statements.")
    state: InvoiceState
    amount_due: Money = strawberry.field(description="What the document asks for (with tax).")
    tax_excluded_amount: Money
    tax_included_amount: Money
    remaining_amount: Money = strawberry.field(
        description="Still open after payments and credit notes.")
    row: strawberry.Private[InvoiceRow]

    @classmethod
    def of(cls, row: InvoiceRow) -> Invoice:
        def money(micros: int) -> Money:
            return Money(amount_micros=micros, currency=row.currency)

        return cls(id=row.invoice_id, bill_no=row.bill_no, kind=InvoiceKind(row.kind),
                   customer_id=row.customer_id, bill_date=row.bill_date,
                   billing_period=DatePeriod(start=row.period_start, end=row.period_end),
                   payment_due_date=row.due_date, state=InvoiceState(row.state),
                   amount_due=money(row.total_micros),
                   tax_excluded_amount=money(row.net_micros),
                   tax_included_amount=money(row.total_micros),
                   remaining_amount=money(row.total_micros - row.paid_micros
                                          - row.credited_micros),
                   row=row)

    @strawberry.field(description="The lines, in document order.")
    async def lines(self, info: Info[Context, None]) -> list[AppliedCustomerBillingRate]:
        rows = await info.context.loaders.invoice_lines.load(self.id)
        return [_line(r, self.row.currency) for r in rows]

    @strawberry.field(description="Net and tax per tax category and rate.")
    async def tax_items(self, info: Info[Context, None]) -> list[TaxItem]:
        totals: dict[tuple[str, str], list[int]] = {}
        for line in await info.context.loaders.invoice_lines.load(self.id):
            acc = totals.setdefault((line.tax_category, line.tax_rate), [0, 0])
            acc[0] += line.net_micros
            acc[1] += line.tax_micros
        currency = self.row.currency
        return [TaxItem(tax_category=category, tax_rate=rate,
                        taxable_amount=Money(amount_micros=net, currency=currency),
                        tax_amount=Money(amount_micros=tax, currency=currency))
                for (category, rate), (net, tax) in sorted(totals.items())]

    @strawberry.field(description="The printable document: HTML in the tenant's locale.")
    async def html(self, info: Info[Context, None]) -> str:
        loaders = info.context.loaders
        lines = await loaders.invoice_lines.load(self.id)
        spec = await loaders.tenant_spec.load(info.context.tenant)
        if spec is None:
            raise graphql_error(NotFound("the tenant has no published spec"))
        return documents.to_html(documents.StoredDocument(
            asdict(self.row), [asdict(line) for line in lines], spec))


@strawberry.type
class InvoiceEdge:
    cursor: str
    node: Invoice


@strawberry.type
class InvoiceConnection:
    edges: list[InvoiceEdge]
    page_info: PageInfo


def invoice_cursor(row: InvoiceRow) -> str:
    return cursor(row.period_start.isoformat(), str(row.invoice_id))


def invoice_page_key(owner: uuid.UUID, first: int, after: str | None) -> InvoicePageKey:
    """One more row than asked for tells whether there is a next page."""
    before = None
    if after is not None:
        try:
            start, invoice_id = uncursor(after)
            before = date.fromisoformat(start), uuid.UUID(invoice_id)
        except ValueError as exc:
            raise graphql_error(Invalid("malformed cursor", field="after")) from exc
    return InvoicePageKey(owner, page_size(first) + 1, before)


async def invoice_connection(context: Context, owner: uuid.UUID, first: int,
                             after: str | None) -> InvoiceConnection:
    rows = await context.loaders.invoices.load(invoice_page_key(owner, first, after))
    edges = [InvoiceEdge(cursor=invoice_cursor(r), node=Invoice.of(r)) for r in rows[:first]]
    return InvoiceConnection(edges=edges, page_info=PageInfo(
        has_next_page=len(rows) > first, end_cursor=edges[-1].cursor if edges else None))


async def load_invoice(context: Context, invoice_id: uuid.UUID) -> Invoice:
    """A document the caller may see: a customer their own, agents the tenant's; anything
    else is NOT_FOUND (another customer's or tenant's alike), partners FORBIDDEN."""
    try:
        scope = context.customer_scope()
    except Forbidden as exc:
        raise graphql_error(exc) from exc
    row = await context.loaders.invoice.load(invoice_id)
    if row is None or (scope is not None and row.customer_id != scope):
        raise graphql_error(NotFound("invoice does not exist", field="id"))
    return Invoice.of(row)
