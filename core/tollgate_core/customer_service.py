"""Customer-facing commands: register, order, top up. Idempotent by key, tenant-scoped."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from tollgate_core.domain.catalog import compile_offer
from tollgate_core.domain.errors import Conflict, Invalid, NotFound
from tollgate_core.domain.money import parse_micros
from tollgate_core.resources.offer import OfferKind
from tollgate_core.store import accounts_repo, catalog_repo
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
                            idempotency_key: str) -> uuid.UUID:
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
                                                      customer_type, payment_type)
            return {"customerId": str(row.customer_id)}

        request = {"op": "registerCustomer", "name": name, "email": email,
                   "paymentType": payment_type, "customerType": customer_type}
        result = await _idempotent(conn, idempotency_key, request, run)
    return uuid.UUID(result["customerId"])


async def place_order(pool: Pool, tenant: str, *, customer_id: uuid.UUID, offer: str,
                      subscriber: str, idempotency_key: str) -> uuid.UUID:
    """Subscribe a customer's line (MSISDN) to a plan or add-on sold now."""
    if not re.match(MSISDN_PATTERN, subscriber):
        raise Invalid("subscriber must be an MSISDN (6 to 15 digits)", field="subscriber")
    async with tenant_tx(pool, tenant) as conn:

        async def run() -> dict[str, Any]:
            customer = await accounts_repo.get_customer(conn, customer_id)
            if customer is None:
                raise NotFound("customer does not exist", field="customerId")
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
            return {"subscriptionId": str(sub.subscription_id)}

        request = {"op": "placeOrder", "customerId": str(customer_id), "offer": offer,
                   "subscriber": subscriber}
        result = await _idempotent(conn, idempotency_key, request, run)
    return uuid.UUID(result["subscriptionId"])


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
