"""Offline charging: pull usage from JetStream, rate a batch in one transaction, then ack.

Exactly-once (ADR 0004): each event is claimed in the same transaction as its effects, and
messages are acked only after commit. A rated event's claim is its rated record (primary key:
the event id); a dead-lettered event's is an `inbox` row. A crash before commit redelivers and
re-rates from scratch; a crash after commit redelivers events that are claimed already: the
batch rolls back at the claim, before any of its other writes, and is rated again without them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Protocol

import asyncpg
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from tollgate_core.bus.pull import pull_consumer
from tollgate_core.domain.catalog import CompiledOffer
from tollgate_core.domain.events import DomainEvent, dlq_subject
from tollgate_core.domain.ledger import (
    Transfer,
    TransferCode,
    customer_account,
    overage_account,
    revenue_account,
    split_prepaid,
    transfer_id,
)
from tollgate_core.domain.rating import When, draw_units, local_date, period_start, price_paid
from tollgate_core.domain.settlement import Revenue
from tollgate_core.domain.thresholds import crossed_allowance, crossed_balance
from tollgate_core.domain.usage import RejectReason, UsageEvent, UsageRejected, parse_usage_event
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.engines.pricing import PlanCache, ServicePlan, resolve
from tollgate_core.observability import (
    BATCH_SECONDS,
    EVENTS_DEAD_LETTERED,
    EVENTS_DUPLICATE,
    EVENTS_RATED,
)
from tollgate_core.resources.offer import Period
from tollgate_core.settings import ChargingSettings
from tollgate_core.settlement import accruals
from tollgate_core.store import outbox, rating_repo, thresholds_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx
from tollgate_core.store.rating_repo import (
    AccountState,
    ActiveSubscription,
    AlreadyHandled,
    BucketKey,
    BucketTerms,
    PaidKey,
    RatedRow,
    RatedValues,
)
from tollgate_core.store.thresholds_repo import Crossing

log = structlog.get_logger(__name__)


class Message(Protocol):
    """The part of a JetStream message the engine uses (nats.aio.msg.Msg satisfies it)."""

    subject: str
    data: bytes

    @property
    def header(self) -> dict[str, str] | None: ...


@dataclass
class BatchOutcome:
    rated: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    balances: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Item:
    """One event on its way through the phases of a batch."""

    event: UsageEvent
    plan: ServicePlan
    subs: list[ActiveSubscription]
    local: date
    """the event's day in the tenant's timezone"""
    buckets: list[tuple[BucketKey, BucketTerms]]
    drawn: int = 0
    left: int = 0
    paid_key: PaidKey | None = None
    chargeable: int = 0
    amount: int = 0
    applied: dict[str, str] = field(default_factory=dict)


@dataclass
class _Work:
    """Mutable state of one batch while it is rated."""

    allowances: dict[BucketKey, tuple[int, int, int]] = field(default_factory=dict)
    allowances_before: dict[BucketKey, tuple[int, int, int]] = field(default_factory=dict)
    paid: dict[PaidKey, int] = field(default_factory=dict)
    balances: dict[str, AccountState] = field(default_factory=dict)
    balances_before: dict[str, AccountState] = field(default_factory=dict)
    rated: list[RatedValues] = field(default_factory=list)
    currency: str | None = None
    revenue: list[Revenue] = field(default_factory=list)
    """the rated records partner agreements may share"""
    transfers: list[Transfer] = field(default_factory=list)
    rejects: list[tuple[str, UsageRejected]] = field(default_factory=list)
    allowance_changed: set[BucketKey] = field(default_factory=set)
    paid_changed: set[PaidKey] = field(default_factory=set)
    offers: dict[uuid.UUID, tuple[uuid.UUID, CompiledOffer]] = field(default_factory=dict)
    """subscription → (customer, offer) of every subscription rated in the batch"""
    timezone: str = "UTC"
    notified: int = 0
    """threshold crossings recorded (their events are in the outbox)"""


class _Turn:
    """Orders the lock phases of the batches one engine has in flight: a batch takes its
    first lock only once the batch before it holds all of its own. So a line's events are
    rated in stream order (a later batch waits in PostgreSQL for the earlier one's rows),
    and a batch never waits for a later one, as the later one waits for nothing before it
    starts locking."""

    def __init__(self, previous: _Turn | None = None) -> None:
        self._previous = previous
        self._locked = asyncio.Event()

    async def wait_previous(self) -> None:
        if self._previous is not None:
            await self._previous._locked.wait()
            self._previous = None  # let it go: turns form a chain as long as the run

    def locked(self) -> None:
        self._locked.set()


def _canonical(event_id: str) -> bool:
    """Whether an id that parsed as a UUID is spelled as PostgreSQL prints it (lower case,
    hyphens at 8-4-4-4-12)."""
    return (len(event_id) == 36 and event_id[8] == event_id[13] == event_id[18]
            == event_id[23] == "-" and event_id == event_id.lower())


def message_key(msg: Message, index: int) -> str:
    """Idempotency key of a message whose body could not be parsed: its Nats-Msg-Id."""
    header = msg.header or {}
    return header.get("Nats-Msg-Id") or f"unkeyed:{msg.subject}:{index}"


class ChargingEngine:
    """Rates usage events of one tenant."""

    RETRIES_MAX = 3
    """Attempts of a batch whose transaction hit a deadlock or a serialization failure."""

    def __init__(self, settings: ChargingSettings, pool: Pool,
                 congestion: CongestionMap | None = None) -> None:
        self.settings = settings
        self.congestion = congestion or CongestionMap()
        self.tenant = settings.tenant
        self.pool = pool
        self.catalog = CatalogCache(settings.tenant)
        self.plans = PlanCache()
        self.outbox_wake = asyncio.Event()

    @property
    def consumer(self) -> str:
        return f"{self.settings.consumer}-{self.tenant}"

    async def process(self, messages: Sequence[Message],
                      turn: _Turn | None = None) -> BatchOutcome:
        """Rate one batch in one transaction. The caller acks the messages after this returns.

        `turn` orders the locking of batches in flight at the same time (see `run`)."""
        turn = turn or _Turn()
        started = time.perf_counter()
        parsed: dict[str, UsageEvent | UsageRejected] = {}
        payloads: dict[str, Message] = {}
        for index, msg in enumerate(messages):
            try:
                event = parse_usage_event(msg.data, self.tenant)
                if not _canonical(event.id):  # one event, one key: the UUID's own text
                    event = replace(event, id=str(uuid.UUID(event.id)))
                key = event.id
                parsed.setdefault(key, event)
            except UsageRejected as rejected:
                key = message_key(msg, index)
                parsed.setdefault(key, rejected)
            payloads.setdefault(key, msg)
        try:
            await turn.wait_previous()
            # First rate as if no event was handled before (nearly always so): the claims
            # find out. When one was, roll back and rate again, looking the events up first.
            careful = False
            attempt = 0
            while True:
                attempt += 1
                outcome = BatchOutcome()
                try:
                    async with tenant_tx(self.pool, self.tenant) as conn:
                        work = await self._process(conn, parsed, payloads, len(messages),
                                                   outcome, turn, careful)
                    break
                except AlreadyHandled:
                    if careful and attempt >= self.RETRIES_MAX:
                        raise
                    if not careful:
                        careful, attempt = True, attempt - 1  # a redelivery: not a retry
                    log.info("batch holds events handled already, rating it again",
                             tenant=self.tenant, attempt=attempt)
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                    if attempt >= self.RETRIES_MAX:
                        raise
                    log.warning("batch rolled back, trying again", tenant=self.tenant,
                                attempt=attempt)
        finally:
            turn.locked()
        if work.transfers or work.rejects or work.notified:  # outbox rows to relay
            self.outbox_wake.set()
        elapsed = time.perf_counter() - started
        BATCH_SECONDS.labels(self.tenant).observe(elapsed)
        EVENTS_RATED.labels(self.tenant).inc(outcome.rated)
        EVENTS_DUPLICATE.labels(self.tenant).inc(outcome.duplicates)
        for _, refusal in work.rejects:
            EVENTS_DEAD_LETTERED.labels(self.tenant, refusal.reason.value).inc()
        return outcome

    async def _process(self, conn: Connection, parsed: dict[str, UsageEvent | UsageRejected],
                       payloads: dict[str, Message], count: int, outcome: BatchOutcome,
                       turn: _Turn, careful: bool) -> _Work:
        await self.catalog.refresh(conn)
        handled = (await rating_repo.handled_events(conn, self.consumer, list(parsed))
                   if careful else set())
        events = [e for k, e in parsed.items() if k not in handled and isinstance(e, UsageEvent)]
        rejects = [(k, e) for k, e in parsed.items()
                   if k not in handled and isinstance(e, UsageRejected)]
        work = await self._rate(conn, events, turn)
        work.rejects.extend(rejects)
        await self._claim(conn, work)
        await self._write(conn, work, payloads, outcome)
        outcome.duplicates = count - outcome.rated - outcome.dead_lettered
        return work

    async def _claim(self, conn: Connection, work: _Work) -> None:
        """Claim the batch's events, before any other write: the rated records (raises
        AlreadyHandled if one was handled meanwhile), then the inbox rows of the events to
        dead-letter (one handled meanwhile is dropped: nothing else depended on it)."""
        if not work.rated and not work.rejects:
            return
        await rating_repo.lock_claims(conn, self.tenant, self.consumer,
                                      exclusive=bool(work.rejects))
        await rating_repo.insert_rated_claims(conn, self.tenant, self.consumer, work.rated)
        if work.rejects:
            claimed = await rating_repo.claim_rejects(conn, self.tenant, self.consumer,
                                                      [key for key, _ in work.rejects])
            work.rejects = [(key, r) for key, r in work.rejects if key in claimed]

    async def _rate(self, conn: Connection, events: list[UsageEvent], turn: _Turn) -> _Work:
        """Rate in three phases, each after the rows it reads are locked (in the lock order
        allowances, paid usage, accounts): allowance draws for every event, then the price of
        what the allowances did not cover, then the split of each charge between balance and
        receivable. Each phase depends only on the ones before, so this rates exactly as one
        event after the other would, and a batch that charges nothing locks no counters and
        no accounts."""
        work = _Work()
        if not events:
            return work
        subs_by_subscriber = await rating_repo.active_subscriptions(
            conn, sorted({e.subscriber for e in events}))
        items: list[_Item] = []
        wanted: dict[BucketKey, BucketTerms] = {}
        for event in events:
            try:
                item = self._prepare(event, subs_by_subscriber.get(event.subscriber))
            except UsageRejected as rejected:
                work.rejects.append((event.id, rejected))
                continue
            items.append(item)
            wanted.update(item.buckets)

        work.allowances = await rating_repo.lock_allowances(conn, self.tenant, wanted)
        work.allowances_before = dict(work.allowances)
        rated = self._draw(items, work)

        paid_wanted = [item.paid_key for item in rated if item.paid_key is not None]
        work.paid = await rating_repo.lock_paid_usage(conn, self.tenant, paid_wanted)
        accounts = self._price(rated, work)

        work.balances = await rating_repo.lock_balances(conn, accounts)
        work.balances_before = dict(work.balances)
        turn.locked()
        for item in rated:
            self._book(item, work)
        return work

    def _prepare(self, event: UsageEvent, subs: list[ActiveSubscription] | None) -> _Item:
        """The plan pricing the event and the allowance buckets it may draw from."""
        if not subs:
            raise UsageRejected(RejectReason.UNKNOWN_SUBSCRIBER,
                                f"no active subscription for {event.subscriber!r}")
        found = self.catalog.at(event.start_time)
        if found is None:
            raise UsageRejected(RejectReason.NO_VALID_OFFER, "the tenant has no catalog yet")
        names = tuple(s.offer for s in subs)
        plan = self.plans.get(found[0], found[1], names, event.service)
        if plan is None:  # no offer of the line in that revision: the rare rules of resolve()
            pricing = resolve(self.catalog, event.subscriber, subs, event.start_time)
            plan = self.plans.get(pricing.revision, pricing.catalog, names, event.service)
            assert plan is not None, "resolve() found an offer of the line in its revision"
        local = local_date(event.start_time, plan.catalog.timezone)
        return _Item(event, plan, subs, local, plan.allowance_keys(subs, local))

    def _draw(self, items: list[_Item], work: _Work) -> list[_Item]:
        """Draw each event's units from its allowances, in order; return the events that can
        be rated (the others are refused: units left and no usage price)."""
        rated = []
        for item in items:
            plan, subs = item.plan, item.subs
            for position, offer in plan.offers:
                sub = subs[position]
                work.offers[sub.subscription_id] = (sub.customer_id, offer)
            work.timezone = plan.catalog.timezone
            quantity = item.event.quantity
            states = [work.allowances[key] for key, _ in item.buckets]
            taken = draw_units(quantity, [q - used - held for q, used, held in states])
            drawn = sum(taken)
            left = quantity - drawn
            if left and plan.tariff is None:
                work.rejects.append((item.event.id, UsageRejected(
                    RejectReason.NO_PRICE,
                    f"no usage price for {item.event.service} beyond the allowances")))
                continue
            if drawn:
                for (key, _), take, (q, used, held) in zip(item.buckets, taken, states,
                                                          strict=True):
                    if take:
                        work.allowances[key] = (q, used + take, held)
                        work.allowance_changed.add(key)
            item.drawn, item.left = drawn, left
            if left:
                item.paid_key = plan.paid_key(subs, item.local)
            rated.append(item)
        return rated

    def _price(self, rated: list[_Item], work: _Work) -> list[str]:
        """Price what the allowances did not cover, in order; return the accounts to charge."""
        accounts = []
        for item in rated:
            plan, event = item.plan, item.event
            factor, item.applied = plan.factors(item.subs, event.attributes, self.congestion)
            if not item.left:
                continue
            assert plan.tariff is not None, "_draw refused events with units left and no tariff"
            assert item.paid_key is not None, "set by _draw for units left"
            already_paid = work.paid[item.paid_key]
            units, charges = price_paid(plan.tariff, already_paid, item.drawn, item.left,
                                        When(event.start_time, plan.catalog.timezone), factor)
            item.chargeable = units
            item.amount = sum(c.amount_micros for c in charges)
            if units:
                work.paid[item.paid_key] = already_paid + units
                work.paid_changed.add(item.paid_key)
            if item.amount:
                accounts.append(customer_account(str(plan.owner(item.subs).customer_id)))
        return accounts

    def _book(self, item: _Item, work: _Work) -> None:
        """The rated record and the ledger transfers of one event."""
        plan, event = item.plan, item.event
        owner = plan.owner(item.subs)
        currency = plan.catalog.currency
        # The record as the columns of its row (ids as text): no dataclass and no UUID object
        # per event on this path; a RatedRow only where partners share the revenue.
        price_name = plan.tariff.price_name if plan.tariff else None
        work.rated.append((
            event.id, str(owner.subscription_id), str(owner.customer_id), event.service.value,
            event.quantity, item.drawn, item.chargeable, item.amount, currency, price_name,
            plan.revision, event.start_time, item.applied))
        work.currency = currency
        if plan.shared:  # accrue() looks at the records whose offer partners share only
            work.revenue.append(accruals.revenue_of(RatedRow(
                uuid.UUID(event.id), owner.subscription_id, owner.customer_id,
                event.service.value, event.quantity, item.drawn, item.chargeable, item.amount,
                currency, price_name, plan.revision, event.start_time, item.applied),
                owner.offer))
        if item.amount:
            self._charge(event.id, owner, item.amount, currency, work)

    def _charge(self, event_id: str, owner: ActiveSubscription, amount: int, currency: str,
                work: _Work) -> None:
        account = customer_account(str(owner.customer_id))
        revenue = revenue_account("usage")
        state = work.balances[account]
        from_balance, overage = split_prepaid(amount, state.spendable_micros)
        if from_balance:
            work.transfers.append(Transfer(transfer_id(event_id, "charge"), account, revenue,
                                           from_balance, currency, TransferCode.USAGE, event_id))
            work.balances[account] = replace(state,
                                             balance_micros=state.balance_micros - from_balance)
        if overage:
            work.transfers.append(Transfer(
                transfer_id(event_id, "overage"), overage_account(str(owner.customer_id)),
                revenue, overage, currency, TransferCode.USAGE_OVERAGE, event_id))

    async def _write(self, conn: Connection, work: _Work, payloads: dict[str, Message],
                     outcome: BatchOutcome) -> None:
        await rating_repo.save_allowances(
            conn, {k: work.allowances[k][1] for k in work.allowance_changed})
        await rating_repo.save_paid_usage(conn, {k: work.paid[k] for k in work.paid_changed})
        work.transfers += await accruals.accrue(conn, self.tenant, self.catalog.get,
                                                work.revenue)
        balances = await rating_repo.post_transfers(conn, self.tenant, work.transfers)
        work.notified = await thresholds_repo.record(conn, self.tenant,
                                                     self._crossings(work, balances))
        dead = [(key, payloads[key].subject, r.reason.value, r.detail, payloads[key].data)
                for key, r in work.rejects]
        await rating_repo.insert_dead_letters(conn, self.tenant, dead)
        await outbox.enqueue_raw(conn, self.tenant, [
            (uuid.uuid5(uuid.NAMESPACE_URL, f"dlq/{key}"), dlq_subject(self.tenant, "usage"),
             data, {"Tollgate-Reason": reason, "Tollgate-Detail": detail[:512],
                    "Tollgate-Original-Subject": subject})
            for key, subject, reason, detail, data in dead])
        customer_prefix = customer_account("")
        await outbox.enqueue(conn, [
            DomainEvent.new(self.tenant, "balance.updated", {
                "customerId": account.removeprefix(customer_prefix), "balanceMicros": balance,
                "currency": work.currency, "cause": "usage"})
            for account, balance in sorted(balances.items())
            if account.startswith(customer_prefix)])
        outcome.rated = len(work.rated)
        outcome.dead_lettered = len(dead)
        outcome.balances = balances

    def _crossings(self, work: _Work, balances: dict[str, int]) -> list[Crossing]:
        crossings: list[Crossing] = []
        for key in work.allowance_changed:
            subscription_id, allowance, period = key
            customer_id, offer = work.offers[subscription_id]
            if not offer.thresholds:
                continue
            quantity, before, _ = work.allowances_before[key]
            after = work.allowances[key][1]
            crossings.extend(
                Crossing(subscription_id, customer_id, rule, period,
                         {"usedUnits": after, "quantity": quantity})
                for rule in crossed_allowance(offer.thresholds, allowance, quantity, before,
                                              after))
        changed = {account for account in balances if account in work.balances_before}
        if not changed:
            return crossings
        month = period_start(datetime.now(UTC), Period.MONTH, work.timezone)
        seen: set[tuple[uuid.UUID, int]] = set()
        for customer_id, offer in work.offers.values():
            account = customer_account(str(customer_id))
            if account not in changed or (customer_id, id(offer)) in seen:
                continue
            seen.add((customer_id, id(offer)))
            crossings.extend(
                Crossing(customer_id, customer_id, rule, month,
                         {"balanceMicros": balances[account]})
                for rule in crossed_balance(offer.thresholds,
                                            work.balances_before[account].balance_micros,
                                            balances[account]))
        return crossings

    async def _settle(self, nc: Client, messages: list[Msg], turn: _Turn) -> None:
        """Rate and commit one batch, then ack its messages (never before the commit)."""
        outcome = await self.process(messages, turn)
        for msg in messages:
            await msg.ack()
        await nc.flush()
        log.debug("batch rated", tenant=self.tenant, rated=outcome.rated,
                  dead_lettered=outcome.dead_lettered, duplicates=outcome.duplicates)

    async def run(self, nc: Client, js: JetStreamContext, stop: asyncio.Event,
                  ready: asyncio.Event | None = None) -> None:
        """Pull, rate, commit, ack, until `stop` is set; `ready` is set once consuming.

        Up to `batches_in_flight` batches are rated at once, each in its own transaction:
        while PostgreSQL commits one, Python pulls, parses and rates the next. `_Turn` keeps
        their locking in stream order."""
        puller = await pull_consumer(nc, js, "USAGE", ConsumerConfig(
            durable_name=self.consumer, filter_subject=f"tg.{self.tenant}.usage.>",
            ack_policy=AckPolicy.EXPLICIT, ack_wait=self.settings.ack_wait_s,
            max_ack_pending=self.settings.batch_max * 20))
        relay = asyncio.create_task(outbox.relay_forever(self.pool, js, self.tenant,
                                                         self.outbox_wake))
        log.info("charging engine started", tenant=self.tenant, consumer=self.consumer)
        if ready is not None:
            ready.set()
        in_flight: deque[asyncio.Task[None]] = deque()
        turn: _Turn | None = None
        depth = max(self.settings.batches_in_flight, 1)
        try:
            while not stop.is_set():
                messages = await puller.fetch(self.settings.batch_max,
                                              self.settings.fetch_timeout_s)
                if messages:
                    turn = _Turn(turn)
                    in_flight.append(asyncio.create_task(self._settle(nc, messages, turn)))
                while in_flight and (len(in_flight) >= depth or in_flight[0].done()):
                    await in_flight.popleft()  # a failed batch fails the engine, as before
            while in_flight:  # stopping: let the batches in flight commit and ack
                await in_flight.popleft()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await puller.stop()
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
