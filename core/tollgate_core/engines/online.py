"""Online (prepaid) charging over NATS request/reply: reserve → commit → release.

A reservation holds allowance units and money (a pending two-phase transfer); commit posts
what was used and voids the rest; release and expiry void all of it. Each request runs in one
transaction that locks the counters and the account row, so concurrent sessions on one
account never overspend.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import asyncpg
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.ledger import (
    Transfer,
    TransferCode,
    customer_account,
    overage_account,
    revenue_account,
    split_prepaid,
    transfer_id,
)
from tollgate_core.domain.online import ResultCode, decide_grant, pricer, settle
from tollgate_core.domain.rating import AllowanceBucket, When
from tollgate_core.domain.usage import UsageEvent, UsageRejected
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.engines.pricing import at_revision, resolve
from tollgate_core.resources.offer import SERVICE_UNITS, Service
from tollgate_core.resources.tenant import FailureHandling
from tollgate_core.settlement import accruals
from tollgate_core.store import outbox, rating_repo, reservations_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx
from tollgate_core.store.rating_repo import RatedRow
from tollgate_core.store.reservations_repo import Reservation

log = structlog.get_logger(__name__)

REQUESTS_IN_FLIGHT_MAX = 64
"""Requests handled at once per process; beyond this NATS buffers them (back-pressure)."""
UNITS_MAX = 10**12
RETRIES_MAX = 3
GROUP_MAX = 4
"""Requests decided in one transaction at most (bounds lock hold time and latency)."""
GROUP_WORKERS = 8
"""Transactions in flight at once: statements of one group run one after another, so
several groups overlap their database round trips."""
_OPERATIONS = ("reserve", "commit", "release")
_DEFERRED = uuid.UUID("0e7c5c1a-9f7e-4d55-8b0a-5d7e3c2b1a90")
CATALOG_MAX_AGE_S = 0.5
"""Online requests look for a newer catalog revision at most this often."""
EXPIRY_BATCH_MAX = 200
_OUTAGES = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, TimeoutError)


class BadRequest(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class OnlinePolicy:
    validity_s: int = 300
    failure_handling: FailureHandling = FailureHandling.TERMINATE
    continue_quota_units: int = 0


def _field(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{key}: required {kind.__name__}")
    return value


def _attributes(body: dict[str, Any]) -> dict[str, str]:
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise BadRequest("attributes: must be an object")
    return {str(k): str(v) for k, v in attributes.items()}


def _units(body: dict[str, Any], key: str) -> int:
    value: int = _field(body, key, int)
    if not 0 <= value <= UNITS_MAX:
        raise BadRequest(f"{key}: must be between 0 and {UNITS_MAX}")
    return value


_Queued = tuple[str, dict[str, Any], "asyncio.Future[dict[str, Any]]"]


class OnlineCharging:
    """The reserve/commit/release decisions of one tenant, against PostgreSQL."""

    def __init__(self, tenant: str, pool: Pool, catalog: CatalogCache, policy: OnlinePolicy,
                 congestion: CongestionMap | None = None,
                 deferred: Callable[[UsageEvent], Awaitable[None]] | None = None) -> None:
        self.tenant = tenant
        self.deferred = deferred
        """Publishes a deferred grant as usage (failure handling `continue`)."""
        self.congestion = congestion or CongestionMap()
        self.pool = pool
        self.catalog = catalog
        self.policy = policy
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []

    async def _reserve(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        session_id: str = _field(body, "sessionId", str)
        request_number: int = _units(body, "requestNumber")
        subscriber: str = _field(body, "subscriber", str)
        try:
            service = Service(_field(body, "service", str))
        except ValueError as exc:
            raise BadRequest("service: unknown service") from exc
        requested = _units(body, "units")
        attributes = _attributes(body)
        previous = await reservations_repo.find_by_request(conn, session_id, request_number)
        if previous is not None:  # a retry: the first answer stands
            return self._granted(previous)
        await self.catalog.refresh(conn, max_age_s=CATALOG_MAX_AGE_S)
        now = datetime.now(UTC)
        subs = await rating_repo.active_subscriptions(conn, [subscriber])
        try:
            pricing = resolve(self.catalog, subscriber, subs.get(subscriber), now)
        except UsageRejected as rejected:
            code = (ResultCode.USER_UNKNOWN if rejected.reason == "UNKNOWN_SUBSCRIBER"
                    else ResultCode.RATING_FAILED)
            return {"result": code, "detail": rejected.detail}
        keys = pricing.allowance_keys(service)
        locked = await rating_repo.lock_allowances(conn, self.tenant, dict(keys))
        buckets = [AllowanceBucket(k[0], k[1], k[2], *locked[k]) for k, _ in keys]
        priced = pricing.tariff(service)
        paid_key = pricing.paid_key(service)
        paid = (await rating_repo.lock_paid_usage(conn, self.tenant, [paid_key]))[paid_key] \
            if paid_key else 0
        owner = pricing.owner_for(service)
        account = customer_account(str(owner.customer_id))
        state = (await rating_repo.lock_balances(conn, [account]))[account]
        factor, applied = pricing.factors(service, attributes, self.congestion)
        price_after = pricer(priced[1], paid, pricing.when(), factor) if priced else None
        grant = decide_grant(requested, buckets, price_after, state.spendable_micros,
                             priced[1].increment if priced else 1)
        if grant.units == 0:
            return {"result": ResultCode.CREDIT_LIMIT_REACHED if requested
                    else ResultCode.SUCCESS, "grantedUnits": 0}
        reservation = Reservation(
            reservation_id=uuid.uuid4(), session_id=session_id,
            request_number=request_number, subscription_id=owner.subscription_id,
            customer_id=owner.customer_id, service=service.value, granted_units=grant.units,
            allowance_units=[[str(d.subscription_id), d.allowance,
                              d.period_start.isoformat(), d.units] for d in grant.draws],
            pending_micros=grant.amount_micros, catalog_revision=pricing.revision,
            price_factors=applied, price_factor=str(factor), created_at=now,
            state="pending", used_units=None, charged_micros=None,
            expires_at=now + timedelta(seconds=self.policy.validity_s))
        await reservations_repo.insert(conn, self.tenant, reservation)
        await reservations_repo.hold(
            conn, account,
            [((d.subscription_id, d.allowance, d.period_start), d.units) for d in grant.draws],
            grant.amount_micros)
        return self._granted(reservation)

    def _granted(self, r: Reservation) -> dict[str, Any]:
        return {"result": ResultCode.SUCCESS, "reservationId": str(r.reservation_id),
                "grantedUnits": r.granted_units, "validitySeconds": self.policy.validity_s,
                "expiresAt": r.expires_at.isoformat()}

    async def _commit(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        reservation_id = self._reservation_id(body)
        used = _units(body, "usedUnits")
        r = await reservations_repo.lock(conn, reservation_id)
        if r is None:
            return {"result": ResultCode.UNKNOWN_RESERVATION}
        if r.state == "posted" and r.used_units == min(used, r.granted_units):
            return self._committed(r, r.used_units, r.charged_micros or 0)
        if r.state != "pending":
            return {"result": ResultCode.RESERVATION_CLOSED, "state": r.state}
        charged_units = min(used, r.granted_units)  # usage beyond the grant is not granted
        charged = await self._post(conn, r, charged_units)
        return self._committed(r, charged_units, charged)

    def _committed(self, r: Reservation, used: int, charged: int) -> dict[str, Any]:
        return {"result": ResultCode.SUCCESS, "reservationId": str(r.reservation_id),
                "usedUnits": used, "chargedMicros": charged}

    async def _post(self, conn: Connection, r: Reservation, used: int) -> int:
        """Post the used part of a reservation and void the rest, in the caller's transaction."""
        await self.catalog.refresh(conn, max_age_s=CATALOG_MAX_AGE_S)
        subs = await rating_repo.active_subscriptions_by_id(conn, [r.subscription_id])
        now = datetime.now(UTC)
        pricing = at_revision(self.catalog, r.catalog_revision, subs, now)
        service = Service(r.service)
        held = r.held_allowances()
        # Lock order everywhere: allowances, paid usage, account (no deadlocks with reserve
        # or offline rating). The held rows exist, so the quantities given here are unused.
        await rating_repo.lock_allowances(conn, self.tenant, {k: (0, None) for k, _ in held})
        priced = pricing.tariff(service) if pricing else None
        paid_key = pricing.paid_key(service) if pricing else None
        paid = (await rating_repo.lock_paid_usage(conn, self.tenant, [paid_key]))[paid_key] \
            if paid_key else 0
        when = When(r.created_at, pricing.catalog.timezone) if pricing else None
        price_after = (pricer(priced[1], paid, when, Fraction(r.price_factor)) if priced
                       else None)
        result = settle(used, held, price_after)
        account = customer_account(str(r.customer_id))
        await reservations_repo.hold(conn, account, [(k, -u) for k, u in held], -r.pending_micros)
        await reservations_repo.use_allowances(conn, list(result.draws))
        if paid_key is not None and result.paid_units:
            await rating_repo.save_paid_usage(conn, {paid_key: paid + result.paid_units})
        state = (await rating_repo.lock_balances(conn, [account]))[account]
        from_balance, overage = split_prepaid(result.amount_micros, state.spendable_micros)
        cause = str(r.reservation_id)
        catalog = self.catalog.get(r.catalog_revision)
        assert catalog is not None, "refresh() loads every revision up to the newest"
        currency = catalog.currency
        transfers = []
        if from_balance:
            transfers.append(Transfer(transfer_id(cause, "charge"), account,
                                      revenue_account("usage"), from_balance, currency,
                                      TransferCode.USAGE, cause))
        if overage:
            transfers.append(Transfer(transfer_id(cause, "overage"),
                                      overage_account(str(r.customer_id)),
                                      revenue_account("usage"), overage, currency,
                                      TransferCode.USAGE_OVERAGE, cause))
        rated = RatedRow(
            r.reservation_id, r.subscription_id, r.customer_id, r.service, used,
            sum(u for _, u in result.draws), result.paid_units, result.amount_micros,
            currency, priced[1].price_name if priced else None, r.catalog_revision, now,
            r.price_factors)
        transfers += await accruals.accrue(conn, self.tenant, self.catalog.get,
                                           [accruals.revenue_of(rated, s.offer) for s in subs])
        balances = await rating_repo.post_transfers(conn, self.tenant, transfers)
        await rating_repo.insert_rated(conn, self.tenant, [rated])
        await reservations_repo.close(conn, r.reservation_id, "posted", used,
                                      result.amount_micros)
        if account in balances:
            await outbox.enqueue(conn, [DomainEvent.new(self.tenant, "balance.updated", {
                "customerId": str(r.customer_id), "balanceMicros": balances[account],
                "currency": currency, "cause": "online"})])
        return result.amount_micros

    def _reservation_id(self, body: dict[str, Any]) -> uuid.UUID:
        try:
            return uuid.UUID(_field(body, "reservationId", str))
        except ValueError as exc:
            raise BadRequest("reservationId: must be a UUID") from exc

    async def _release(self, conn: Connection, body: dict[str, Any]) -> dict[str, Any]:
        reservation_id = self._reservation_id(body)
        r = await reservations_repo.lock(conn, reservation_id)
        if r is None:
            return {"result": ResultCode.UNKNOWN_RESERVATION}
        if r.state in ("voided", "expired"):
            return {"result": ResultCode.SUCCESS, "state": r.state}
        if r.state != "pending":
            return {"result": ResultCode.RESERVATION_CLOSED, "state": r.state}
        await self._void(conn, r, "voided")
        return {"result": ResultCode.SUCCESS, "state": "voided"}

    async def _void(self, conn: Connection, r: Reservation, state: str) -> None:
        await reservations_repo.hold(conn, customer_account(str(r.customer_id)),
                                     [(k, -u) for k, u in r.held_allowances()], -r.pending_micros)
        await reservations_repo.close(conn, r.reservation_id, state)

    async def expire_due(self) -> int:
        """Void reservations past their validity and return their holds."""
        async with tenant_tx(self.pool, self.tenant) as conn:
            due = await reservations_repo.expired(conn, EXPIRY_BATCH_MAX)
            for reservation_id in due:
                r = await reservations_repo.lock(conn, reservation_id)
                assert r is not None
                await self._void(conn, r, "expired")
        return len(due)

    async def handle(self, operation: str, payload: bytes) -> dict[str, Any]:
        """Decode a request and have it decided in the next group transaction."""
        try:
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise BadRequest("request must be a JSON object")
            if operation not in _OPERATIONS:
                raise BadRequest(f"operation: one of {', '.join(_OPERATIONS)}")
        except (BadRequest, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return {"result": ResultCode.INVALID_REQUEST, "detail": str(exc)}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((operation, body, future))
        self._workers = [w for w in self._workers if not w.done()]
        if len(self._workers) < GROUP_WORKERS:
            self._workers.append(asyncio.create_task(self._decide_groups()))
        return await future

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _decide_groups(self) -> None:
        """Group commit: the requests waiting when a transaction starts share it (one BEGIN,
        one COMMIT and its WAL flush for many). Under light load a group is one request."""
        while True:
            group = [await self._queue.get()]
            while len(group) < GROUP_MAX and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                answers = await self._decide_together(group)
            except Exception:  # the group's transaction rolled back: decide each alone
                answers = [await self._decide_alone(op, body) for op, body, _ in group]
            for (_, _, future), answer in zip(group, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def _decide_together(self, group: list[_Queued]) -> list[dict[str, Any]]:
        async with tenant_tx(self.pool, self.tenant) as conn:
            return [await self._decide(conn, op, body) for op, body, _ in group]

    async def _decide_alone(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request in its own transaction: a deadlock or serialization failure is retried
        a bounded number of times; an outage or a bug still gets an answer."""
        for attempt in range(1, RETRIES_MAX + 1):
            try:
                async with tenant_tx(self.pool, self.tenant) as conn:
                    return await self._decide(conn, operation, body)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt < RETRIES_MAX:
                    continue
                log.error("online charging gave up after retries", tenant=self.tenant)
            except _OUTAGES as exc:
                log.error("online charging cannot decide", tenant=self.tenant, error=repr(exc))
                if (operation == "reserve" and self.deferred is not None
                        and self.policy.failure_handling is FailureHandling.CONTINUE):
                    return await self._defer(body)
            except Exception:
                log.exception("online charging request failed", tenant=self.tenant,
                              operation=operation)
            break
        return {"result": ResultCode.UNABLE_TO_COMPLY}

    async def _decide(self, conn: Connection, operation: str,
                      body: dict[str, Any]) -> dict[str, Any]:
        """Every BadRequest is raised before the request's first statement, so refusing one
        request never disturbs the others in its group."""
        try:
            if operation == "reserve":
                return await self._reserve(conn, body)
            if operation == "commit":
                return await self._commit(conn, body)
            return await self._release(conn, body)
        except BadRequest as exc:
            return {"result": ResultCode.INVALID_REQUEST, "detail": str(exc)}

    async def _defer(self, body: dict[str, Any]) -> dict[str, Any]:
        """`continue` mode: grant the configured quota now and charge it later, as a usage
        event of the whole quota on the USAGE stream. Offline rating books it once the
        database is back; for prepaid, what the balance cannot cover goes to the customer's
        receivable, so the balance never goes negative."""
        assert self.deferred is not None
        try:
            session_id = _field(body, "sessionId", str)
            request_number = _units(body, "requestNumber")
            event = UsageEvent(
                id=str(uuid.uuid5(_DEFERRED, f"{self.tenant}/{session_id}/{request_number}")),
                tenant=self.tenant, subscriber=_field(body, "subscriber", str),
                service=Service(_field(body, "service", str)),
                quantity=self.policy.continue_quota_units,
                unit=SERVICE_UNITS[Service(body["service"])], start_time=datetime.now(UTC),
                attributes={**_attributes(body), "deferredSession": session_id})
        except (BadRequest, ValueError) as exc:
            return {"result": ResultCode.INVALID_REQUEST, "detail": str(exc)}
        await self.deferred(event)
        return {"result": ResultCode.SUCCESS, "reservationId": event.id,
                "grantedUnits": self.policy.continue_quota_units, "deferred": True}


async def serve(nc: Client, online: OnlineCharging, stop: asyncio.Event,
                ready: asyncio.Event | None = None, sweep_interval_s: float = 1.0) -> None:
    """Answer `tg.<tenant>.charge.{reserve,commit,release}` (queue group: replicas share)."""
    slots = asyncio.Semaphore(REQUESTS_IN_FLIGHT_MAX)
    tasks: set[asyncio.Task[None]] = set()

    async def answer(operation: str, msg: Msg) -> None:
        async with slots:
            try:
                reply = await online.handle(operation, msg.data)
            except Exception:
                # A bug or an unexpected database error: the caller still gets an answer it
                # can act on (refuse service), and we get the stack trace.
                log.exception("online charging request failed", tenant=online.tenant,
                              operation=operation)
                reply = {"result": ResultCode.UNABLE_TO_COMPLY}
            await msg.respond(json.dumps(reply, separators=(",", ":")).encode())

    def handler(operation: str) -> Any:
        async def on_message(msg: Msg) -> None:
            task = asyncio.create_task(answer(operation, msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return on_message

    subscriptions: list[Subscription] = []
    for operation in ("reserve", "commit", "release"):
        subscriptions.append(await nc.subscribe(
            f"tg.{online.tenant}.charge.{operation}", queue=f"charging-{online.tenant}",
            cb=handler(operation)))
    await nc.flush()  # the subscriptions exist on the server before we say we are ready
    if ready is not None:
        ready.set()
    try:
        while not stop.is_set():
            try:
                await online.expire_due()
            except _OUTAGES as exc:
                log.warning("reservation sweep failed", tenant=online.tenant, error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), sweep_interval_s)
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
        await asyncio.gather(*tasks, return_exceptions=True)
        await online.close()
