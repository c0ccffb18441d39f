"""Customer-facing commands: register, order, cancel, top up, consent, erase.

Idempotent by key and tenant-scoped. `only_customer`, where a command takes it, is the one
customer the caller may act for (a customer's own credential); None means the whole tenant
(agents). Objects outside it are reported as not found.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollgate_core.billing import payments
from tollgate_core.domain.billing import is_timezone
from tollgate_core.domain.care import (
    CHANNEL_PATTERN,
    CancelEffect,
    ConsentPurpose,
    ItemAction,
    OrderState,
    OrderType,
    bill_cycle_end,
    is_pseudonym,
    pseudonym,
    pseudonymous_email,
)
from tollgate_core.domain.catalog import compile_offer
from tollgate_core.domain.errors import Conflict, Invalid, NotFound
from tollgate_core.domain.money import parse_micros, round_to_minor
from tollgate_core.resources.offer import OfferKind
from tollgate_core.store import accounts_repo, care_repo, catalog_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx

MSISDN_PATTERN = r"^\+?[0-9]{6,15}$"


async def _idempotent(conn: Connection, key: str, request: dict[str, Any],
                      run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Return the stored response of `key`, or run and store; same key + other input: Conflict."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
    row = await conn.fetchrow(
        "SELECT request_hash, response FROM idempotency_keys WHERE key = $1", key)
    if row is not None:
        if row["request_hash"] != digest:
            raise Conflict("idempotencyKey was already used with a different input",
                           field="idempotencyKey")
        stored: dict[str, Any] = row["response"]
        return stored
    response = await run()
    await conn.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response)"
        " VALUES (current_setting('tollgate.tenant'), $1, $2, $3)", key, digest, response)
    return response


async def register_customer(pool: Pool, tenant: str, *, name: str, email: str,
                            payment_type: str, customer_type: str,
                            idempotency_key: str, timezone: str | None = None) -> uuid.UUID:
    """`timezone`: the IANA timezone the account's bill cycle runs in (None: the tenant's)."""
    if timezone is not None and not is_timezone(timezone):
        raise Invalid("timezone must be an IANA timezone, e.g. Europe/Berlin",
                      field="timezone")
    if payment_type not in ("prepaid", "postpaid"):
        raise Invalid("paymentType must be prepaid or postpaid", field="paymentType")
    if customer_type not in ("consumer", "business"):
        raise Invalid("customerType must be consumer or business", field="customerType")
    if "@" not in email:
        raise Invalid("email must be an e-mail address", field="email")
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        if spec is None:
            raise NotFound(f"tenant {tenant!r} does not exist")
        currency = spec.currency

        async def run() -> dict[str, Any]:
            row = await accounts_repo.create_customer(conn, tenant, currency, name, email,
                                                      customer_type, payment_type, timezone)
            return {"customerId": str(row.customer_id)}

        request = {"op": "registerCustomer", "name": name, "email": email,
                   "paymentType": payment_type, "customerType": customer_type}
        if timezone is not None:  # absent as before: keys used before stay valid
            request["timezone"] = timezone
        result = await _idempotent(conn, idempotency_key, request, run)
    return uuid.UUID(result["customerId"])


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    subscription_id: uuid.UUID
    order_id: uuid.UUID | None
    """None only for a repeat of a request answered before orders were recorded."""


async def place_order(pool: Pool, tenant: str, *, customer_id: uuid.UUID, offer: str,
                      subscriber: str, idempotency_key: str) -> uuid.UUID:
    """Subscribe a customer's line (MSISDN) to a plan or add-on sold now."""
    placed = await order_offer(pool, tenant, customer_id=customer_id, offer=offer,
                               subscriber=subscriber, idempotency_key=idempotency_key)
    return placed.subscription_id


async def _require_unerased_customer(conn: Connection, customer_id: uuid.UUID) -> None:
    """Refuse an unknown or erased customer (orders and consents need a person)."""
    customer = await accounts_repo.get_customer(conn, customer_id)
    if customer is None:
        raise NotFound("customer does not exist", field="customerId")
    if customer.erased_at is not None:
        raise Conflict("the customer was erased", field="customerId")


async def order_offer(pool: Pool, tenant: str, *, customer_id: uuid.UUID, offer: str,
                      subscriber: str, idempotency_key: str) -> PlacedOrder:
    """Subscribe a line to an offer; the order is recorded (and `order.updated` emitted)."""
    if not re.match(MSISDN_PATTERN, subscriber):
        raise Invalid("subscriber must be an MSISDN (6 to 15 digits)", field="subscriber")
    async with tenant_tx(pool, tenant) as conn:

        async def run() -> dict[str, Any]:
            await _require_unerased_customer(conn, customer_id)
            latest = await catalog_repo.latest_revision(conn, tenant)
            now = datetime.now(UTC)
            spec = latest.source.offers.get(offer) if latest else None
            if latest is None or spec is None:
                raise NotFound(f"offer {offer!r} does not exist", field="offerId")
            compiled = compile_offer(offer, spec)
            if not compiled.sellable_at(now):
                raise Invalid(f"offer {offer!r} is not sold now", field="offerId")
            held = {s.offer for s in await accounts_repo.list_subscriptions(conn, customer_id)
                    if s.status == "active" and s.subscriber == subscriber}
            missing = [r for r in spec.eligibility.requires if r not in held]
            if missing:
                raise Invalid(f"offer {offer!r} requires {', '.join(missing)}", field="offerId")
            if compiled.kind is OfferKind.ADDON and not held:
                raise Invalid("an add-on needs a plan on the same line", field="offerId")
            excluded = [e for e in spec.eligibility.excludes if e in held]
            if excluded:
                raise Invalid(f"offer {offer!r} excludes {', '.join(excluded)}", field="offerId")
            if compiled.kind is not OfferKind.ADDON and await accounts_repo.subscriber_taken(
                    conn, subscriber, customer_id):
                raise Conflict("the line already belongs to another customer",
                               field="subscriber")
            sub = await accounts_repo.create_subscription(conn, tenant, customer_id, offer,
                                                          subscriber, latest.revision, now)
            order = await care_repo.create_order(
                conn, tenant, customer_id, OrderType.ADD, OrderState.COMPLETED,
                [{"action": ItemAction.ADD.value, "offerId": offer,
                  "subscriptionId": str(sub.subscription_id)}])
            return {"subscriptionId": str(sub.subscription_id), "orderId": str(order.order_id)}

        request = {"op": "placeOrder", "customerId": str(customer_id), "offer": offer,
                   "subscriber": subscriber}
        result = await _idempotent(conn, idempotency_key, request, run)
    order_id = result.get("orderId")
    return PlacedOrder(uuid.UUID(result["subscriptionId"]),
                       uuid.UUID(order_id) if order_id else None)


async def top_up(pool: Pool, tenant: str, *, customer_id: uuid.UUID, amount: str,
                 idempotency_key: str) -> int:
    try:
        micros = parse_micros(amount)
    except ValueError as exc:
        raise Invalid(str(exc), field="amount") from exc
    if micros <= 0:
        raise Invalid("amount must be positive", field="amount")
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        customer = await accounts_repo.get_customer(conn, customer_id)
        if spec is None or customer is None:
            raise NotFound("customer does not exist", field="customerId")
        currency = spec.currency

        async def run() -> dict[str, Any]:
            balance = await accounts_repo.top_up(conn, tenant, customer_id, micros, currency,
                                                 idempotency_key)
            return {"balanceMicros": balance}

        request = {"op": "topUp", "customerId": str(customer_id), "amount": micros}
        result = await _idempotent(conn, idempotency_key, request, run)
    return int(result["balanceMicros"])


async def update_consent(pool: Pool, tenant: str, *, customer_id: uuid.UUID,
                         marketing: bool | None, data_processing: bool | None, channel: str,
                         recorded_by: str, idempotency_key: str) -> list[uuid.UUID]:
    """Record consent decisions as new history rows (time, channel, who); return their ids."""
    decisions = [(purpose, granted) for purpose, granted in
                 ((ConsentPurpose.MARKETING, marketing),
                  (ConsentPurpose.DATA_PROCESSING, data_processing)) if granted is not None]
    if not decisions:
        raise Invalid("give marketing, dataProcessing or both", field="marketing")
    if not CHANNEL_PATTERN.match(channel):
        raise Invalid("channel must be a short lowerCamelCase word", field="channel")
    async with tenant_tx(pool, tenant) as conn:

        async def run() -> dict[str, Any]:
            await _require_unerased_customer(conn, customer_id)
            rows = await care_repo.record_consents(conn, tenant, customer_id, decisions,
                                                   channel, recorded_by)
            return {"recordIds": [str(r.record_id) for r in rows]}

        request = {"op": "updateConsent", "customerId": str(customer_id),
                   "marketing": marketing, "dataProcessing": data_processing,
                   "channel": channel}
        result = await _idempotent(conn, idempotency_key, request, run)
    return [uuid.UUID(r) for r in result["recordIds"]]


@dataclass(frozen=True, slots=True)
class Cancellation:
    order_id: uuid.UUID
    customer_id: uuid.UUID
    subscription_ids: list[uuid.UUID]
    ends_at: datetime


async def cancel_subscription(pool: Pool, tenant: str, *, subscription_id: uuid.UUID,
                              effect: CancelEffect, only_customer: uuid.UUID | None,
                              idempotency_key: str) -> Cancellation:
    """End a subscription now or at the end of the bill cycle, with a cancel order.

    Cancelling a plan also ends the add-ons of the same line, which need a plan.
    """
    async with tenant_tx(pool, tenant) as conn:

        async def run() -> dict[str, Any]:
            target = await care_repo.get_subscription(conn, subscription_id)
            if target is None or (only_customer is not None
                                  and target.customer_id != only_customer):
                raise NotFound("subscription does not exist", field="subscriptionId")
            # Lock the line's active subscriptions in key order, then decide on locked rows.
            line = {s.subscription_id: s for s in await care_repo.line_subscriptions_for_update(
                conn, target.customer_id, target.subscriber)}
            current = line.get(subscription_id)
            if current is None:
                raise Conflict("the subscription is already cancelled", field="subscriptionId")
            immediate = effect is CancelEffect.IMMEDIATE
            if not immediate and current.ended_at is not None:
                raise Conflict(f"the subscription already ends at {current.ended_at.isoformat()}",
                               field="subscriptionId")
            spec = await catalog_repo.get_tenant(conn, tenant)
            latest = await catalog_repo.latest_revision(conn, tenant)
            assert spec is not None
            offers = latest.source.offers if latest else {}

            def is_addon(offer: str) -> bool:
                return offer in offers and offers[offer].kind is OfferKind.ADDON

            ending = [current]
            if not is_addon(current.offer):
                ending += [s for s in line.values() if s is not current and is_addon(s.offer)
                           and (immediate or s.ended_at is None)]
            now = datetime.now(UTC)
            # the end of the account's bill cycle, in the timezone the account bills in
            owner = await accounts_repo.get_customer(conn, current.customer_id)
            zone = (owner.timezone if owner is not None else None) or spec.timezone
            ends_at = now if immediate else bill_cycle_end(now, spec.billing.cycle_day, zone)
            ids = [s.subscription_id for s in ending]
            if immediate:
                await care_repo.supersede_pending_orders(conn, tenant, ids)
            await care_repo.end_subscriptions(conn, ids, ends_at, immediate)
            order = await care_repo.create_order(
                conn, tenant, current.customer_id, OrderType.CANCEL,
                OrderState.COMPLETED if immediate else OrderState.PENDING,
                [{"action": ItemAction.DELETE.value, "offerId": s.offer,
                  "subscriptionId": str(s.subscription_id)} for s in ending],
                due_at=None if immediate else ends_at)
            return {"orderId": str(order.order_id), "customerId": str(current.customer_id),
                    "subscriptionIds": [str(i) for i in ids], "endsAt": ends_at.isoformat()}

        request = {"op": "cancelSubscription", "subscriptionId": str(subscription_id),
                   "effect": effect.value}
        result = await _idempotent(conn, idempotency_key, request, run)
        if only_customer is not None and result["customerId"] != str(only_customer):
            raise NotFound("subscription does not exist", field="subscriptionId")
    return Cancellation(uuid.UUID(result["orderId"]), uuid.UUID(result["customerId"]),
                        [uuid.UUID(i) for i in result["subscriptionIds"]],
                        datetime.fromisoformat(result["endsAt"]))


async def erase_customer(pool: Pool, tenant: str, *, customer_id: uuid.UUID,
                         requested_by: str, idempotency_key: str) -> datetime:
    """GDPR erasure: name, e-mail and the customer's MSISDNs become random pseudonyms; the
    ledger, rated usage, orders and consent history (keyed by ids) stay. Erasing needs the
    contracts to have ended: active subscriptions are a conflict (cancel them first).
    Erasing an erased customer changes nothing and answers the first erasure's time."""
    async with tenant_tx(pool, tenant) as conn:

        async def run() -> dict[str, Any]:
            locked = await conn.fetchval(
                "SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id)
            if locked is None:
                raise NotFound("customer does not exist", field="customerId")
            already = await care_repo.erasure_of(conn, customer_id)
            if already is not None:
                return {"erasedAt": already.isoformat()}
            subscriptions = await accounts_repo.list_subscriptions(conn, customer_id)
            if any(s.status != "cancelled" for s in subscriptions):
                raise Conflict("the customer has subscriptions not cancelled yet: cancel "
                               "them first", field="customerId")
            lines = {s.subscriber: pseudonym() for s in subscriptions
                     if not is_pseudonym(s.subscriber)}
            erased_at = await care_repo.erase_customer(
                conn, tenant, customer_id, requested_by, pseudonym(), pseudonymous_email(),
                lines)
            return {"erasedAt": erased_at.isoformat()}

        request = {"op": "eraseCustomer", "customerId": str(customer_id)}
        result = await _idempotent(conn, idempotency_key, request, run)
    return datetime.fromisoformat(result["erasedAt"])


async def complete_due_cancellations(pool: Pool, tenant: str) -> int:
    """Carry out end-of-period cancellations whose end has passed (subscriptions cancelled,
    orders completed). Idempotent; meant for the billing engine's period close."""
    async with tenant_tx(pool, tenant) as conn:
        return await care_repo.complete_due_cancellations(conn, tenant)


async def set_loyalty_tier(pool: Pool, tenant: str, customer_id: uuid.UUID,
                           tier: str | None) -> None:
    """Set (or clear) the customer's loyalty tier, which Offers may price
    (`dynamicPricing.loyalty`); rating picks it up with the next event."""
    async with tenant_tx(pool, tenant) as conn:
        updated = await conn.fetchval(
            "UPDATE customers SET loyalty_tier = $2 WHERE customer_id = $1 RETURNING 1",
            customer_id, tier)
    if not updated:
        raise ValueError(f"customerId: no customer {customer_id}")


PAYMENT_REFERENCE_MAX = 200


@dataclass(frozen=True, slots=True)
class RecordedPayment:
    payment_reference: str
    amount_micros: int
    currency: str
    applied: list[tuple[uuid.UUID, int]]
    """(invoice id, micro-units) settled, oldest due first."""
    unapplied_micros: int
    """What no open invoice needed: it stays on the account as credit."""


async def record_payment(pool: Pool, tenant: str, *, customer_id: uuid.UUID, amount: str,
                         payment_reference: str, idempotency_key: str) -> RecordedPayment:
    """Record a payment received for a customer (an agent's command) and settle their open
    invoices with it (billing.payments.record_payment; the reference is the payment's id).

    The idempotency key is claimed, with its input, in a transaction of its own before the
    payment: a repeat then finds the payment by its reference and changes nothing, and other
    input under the key is a Conflict. A reference already recorded for another customer or
    amount is a Conflict too."""
    try:
        micros = parse_micros(amount)
    except ValueError as exc:
        raise Invalid(str(exc), field="amount") from exc
    if micros <= 0:
        raise Invalid("amount must be positive", field="amount")
    reference = payment_reference.strip()
    if not reference or len(reference) > PAYMENT_REFERENCE_MAX:
        raise Invalid(f"paymentReference must have 1 to {PAYMENT_REFERENCE_MAX} characters",
                      field="paymentReference")
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        customer = await accounts_repo.get_customer(conn, customer_id)
        if spec is None or customer is None:
            raise NotFound("customer does not exist", field="customerId")
        currency = spec.currency
        if round_to_minor(micros, currency) != micros:
            raise Invalid(f"amount has more decimals than {currency} has",
                          field="amount")

        async def claim() -> dict[str, Any]:
            return {"paymentReference": reference}

        request = {"op": "recordPayment", "customerId": str(customer_id), "amount": micros,
                   "paymentReference": reference}
        await _idempotent(conn, idempotency_key, request, claim)
    try:
        result = await payments.record_payment(pool, tenant, reference, customer_id, micros)
    except payments.BillingError as exc:
        field, _, message = str(exc).partition(": ")
        if field == "customerId":
            raise NotFound("customer does not exist", field="customerId") from exc
        raise Invalid(message or str(exc), field=field or None) from exc
    if result.duplicate:
        async with tenant_tx(pool, tenant, readonly=True) as conn:
            first = await conn.fetchrow(
                "SELECT customer_id, amount_micros FROM payments WHERE payment_id = $1",
                reference)
        if first is None or (first["customer_id"], first["amount_micros"]) != (customer_id,
                                                                                micros):
            raise Conflict("paymentReference was already recorded for another payment",
                           field="paymentReference")
    return RecordedPayment(reference, micros, currency, result.applied,
                           result.unapplied_micros)
