"""GraphQL object types. Amounts are exact decimal strings plus micro-units; never floats."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import Enum
from typing import Annotated, NewType

import strawberry

from tollgate_core.domain.money import format_micros

MAX_SAFE_INTEGER = 2**53 - 1


def _serialize_long(value: int) -> int:
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise ValueError("Long out of the range JSON clients represent exactly")
    return value


def _parse_long(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("Long must be an integer")
    return _serialize_long(value)


Long = NewType("Long", int)
LONG_SCALAR = strawberry.scalar(
    name="Long",
    description="Integer up to 2^53-1 (bytes, seconds, micro-units); JSON number.",
    serialize=_serialize_long,
    parse_value=_parse_long,
)


@strawberry.type(description="An exact amount of money.")
class Money:
    amount_micros: int = strawberry.field(graphql_type=Long,
                                          description="Micro-units (10^-6 of the major unit).")
    currency: str = strawberry.field(description="ISO 4217 code.")
    # Always formatted from amount_micros when made (whatever is passed): a plain field
    # costs far less to serve than a resolver (ADR 0009).
    amount: str = strawberry.field(
        default="", description="Decimal amount in major units, exact (e.g. \"12.5\").")

    def __post_init__(self) -> None:
        self.amount = format_micros(self.amount_micros)


@strawberry.type(description="Remaining units of one allowance in its current period.")
class Allowance:
    subscription_id: uuid.UUID
    name: str
    period_start: date
    quantity: int = strawberry.field(graphql_type=Long)
    used: int = strawberry.field(graphql_type=Long)

    @strawberry.field(graphql_type=Long)
    def remaining(self) -> int:
        return max(self.quantity - self.used, 0)


@strawberry.type(description="A customer's monetary balance.")
class Balance:
    balance: Money = strawberry.field(description="Prepaid credit (positive) or amount owed "
                                      "(negative) on the customer account.")
    overage: Money = strawberry.field(description="Usage a prepaid balance could not cover.")


@strawberry.type(description="One rated usage record.")
class RatedUsage:
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    service: str
    quantity: int = strawberry.field(graphql_type=Long)
    allowance_units: int = strawberry.field(graphql_type=Long,
                                            description="Units drawn from allowances.")
    chargeable_units: int = strawberry.field(graphql_type=Long,
                                             description="Units charged after rounding.")
    charge: Money
    price_name: str | None
    catalog_revision: int = strawberry.field(description="Catalog revision that priced it.")
    start_time: datetime


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class RatedUsageEdge:
    cursor: str
    node: RatedUsage


@strawberry.type
class RatedUsageConnection:
    edges: list[RatedUsageEdge]
    page_info: PageInfo


@strawberry.type
class Subscription:
    id: uuid.UUID
    offer_id: str
    subscriber: str
    status: str
    catalog_revision: int
    started_at: datetime
    ends_at: datetime | None = strawberry.field(
        default=None, description="When it ended, or ends (a cancellation at the end of the "
        "period keeps it active until then).")


@strawberry.type(description="A usage price tier: units in [from, to) cost unitPrice per `per`.")
class PriceTier:
    from_: int = strawberry.field(graphql_type=Long, name="from")
    to: int | None = strawberry.field(graphql_type=Long | None)
    unit_price: Money
    per: int = strawberry.field(graphql_type=Long)


@strawberry.type
class OfferPrice:
    name: str
    price_type: str
    amount: Money | None
    period: str | None
    service: str | None
    tiers: list[PriceTier]


@strawberry.type
class OfferAllowance:
    name: str
    service: str
    quantity: int = strawberry.field(graphql_type=Long)
    unit: str
    period: str


@strawberry.type(description="A product offering of the caller's tenant.")
class Offer:
    id: str
    display_name: str
    description: str
    kind: str
    lifecycle_status: str
    channels: list[str]
    segments: list[str]
    prices: list[OfferPrice]
    allowances: list[OfferAllowance]
    catalog_revision: int


@strawberry.type
class OfferEdge:
    cursor: str
    node: Offer


@strawberry.type
class OfferConnection:
    edges: list[OfferEdge]
    page_info: PageInfo
    total_count: int


# Typed errors a client branches on (union members of mutation results).
@strawberry.type(description="Input broke a rule; `field` names the input field.")
class ValidationError:
    code: str
    message: str
    field: str | None


@strawberry.type(description="Something referenced does not exist (or is not visible).")
class NotFoundError:
    code: str
    message: str
    field: str | None


@strawberry.type(description="The request conflicts with existing state or an earlier request.")
class ConflictError:
    code: str
    message: str
    field: str | None


@strawberry.type(description="The caller may not do this.")
class ForbiddenError:
    code: str
    message: str
    field: str | None


UserError = Annotated[ValidationError | NotFoundError | ConflictError | ForbiddenError,
                      strawberry.union("UserError")]


# ---------------------------------------------------------------- customer care


@strawberry.enum(description="What an order does.")
class OrderType(Enum):
    ADD = "add"
    CANCEL = "cancel"


@strawberry.enum(description="Where an order stands.")
class OrderState(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


@strawberry.enum
class OrderItemAction(Enum):
    ADD = "add"
    DELETE = "delete"


@strawberry.enum(description="When a cancellation takes effect.")
class CancellationEffective(Enum):
    IMMEDIATE = "immediate"
    END_OF_PERIOD = "endOfPeriod"


@strawberry.enum(description="Where a consent decision was given.")
class ConsentChannel(Enum):
    WEB = "web"
    APP = "app"
    AGENT = "agent"
    STORE = "store"
    API = "api"


@strawberry.enum
class ConsentPurpose(Enum):
    MARKETING = "marketing"
    DATA_PROCESSING = "dataProcessing"


@strawberry.type(description="One offer of an order and what happens to it.")
class OrderItem:
    action: OrderItemAction
    offer_id: str
    subscription_id: uuid.UUID


@strawberry.type(description="A customer's order (subscribe, cancel).")
class Order:
    id: uuid.UUID
    customer_id: uuid.UUID
    type: OrderType
    state: OrderState
    items: list[OrderItem]
    due_at: datetime | None = strawberry.field(
        description="When a pending order takes effect.")
    created_at: datetime
    updated_at: datetime


@strawberry.type
class OrderEdge:
    cursor: str
    node: Order


@strawberry.type
class OrderConnection:
    edges: list[OrderEdge]
    page_info: PageInfo


@strawberry.type(description="The customer's current consent per purpose (null: never asked).")
class ConsentState:
    marketing: bool | None
    data_processing: bool | None
    updated_at: datetime | None


@strawberry.type(description="One consent decision, as recorded.")
class ConsentRecord:
    id: uuid.UUID
    purpose: ConsentPurpose
    granted: bool
    channel: ConsentChannel
    recorded_by: str = strawberry.field(description="Subject of the credential that recorded it.")
    recorded_at: datetime


@strawberry.type
class ConsentRecordEdge:
    cursor: str
    node: ConsentRecord


@strawberry.type
class ConsentRecordConnection:
    edges: list[ConsentRecordEdge]
    page_info: PageInfo


# ---------------------------------------------------------------- partners


@strawberry.type(description="Above `from` of monthly gross revenue, the partner gets `percent`.")
class RevenueShareTier:
    from_: Money = strawberry.field(name="from")
    percent: str


@strawberry.type(description="How revenue is shared with the partner.")
class RevenueShare:
    model: str = strawberry.field(description="percentage, perUnitFee or tiered.")
    percent: str | None = strawberry.field(description="Partner share in percent (percentage).")
    per_unit_fee: Money | None
    tiers: list[RevenueShareTier]
    payer: str = strawberry.field(description="Who pays the share: operator or partner.")


@strawberry.type
class PartnerSettlement:
    period: str
    minimum_guarantee: Money | None
    cap: Money | None


@strawberry.type(description="A graduated price tier of a network API: the calls of a "
                 "calendar month (tenant timezone), numbered from 0, in [from, to) cost "
                 "`pricePerCall` each.")
class NetworkApiPriceTier:
    from_: int = strawberry.field(name="from", graphql_type=Long,
                                  description="First call of the tier (0: the month's first).")
    to: int | None = strawberry.field(graphql_type=Long | None,
                                      description="End of the tier (exclusive); null on the "
                                      "last tier.")
    price_per_call: Money


@strawberry.type(description="A network API the partner may call, and its price: "
                 "`pricePerCall`, or graduated `tiers` of the month's calls, or neither "
                 "(free).")
class PartnerNetworkApi:
    name: str
    price_per_call: Money | None = strawberry.field(description="One price for every call "
                                                    "(null with tiers, or when free).")
    tiers: list[NetworkApiPriceTier] = strawberry.field(description="Graduated prices by "
                                                        "the call's number in its month; "
                                                        "empty with pricePerCall.")
    rate_limit_per_second: int
    monthly_quota: int | None
