"""Offline charging: pull usage from JetStream, rate a batch in one transaction, then ack.

Exactly-once: each event's id is claimed in the `inbox` table in the same transaction as its
rated record and ledger transfers, and messages are acked only after commit. A crash before
commit redelivers and re-rates from scratch; a crash after commit redelivers into an inbox hit.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

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
from tollgate_core.domain.rating import AllowanceBucket, period_start, rate
from tollgate_core.domain.thresholds import crossed_allowance, crossed_balance
from tollgate_core.domain.usage import RejectReason, UsageEvent, UsageRejected, parse_usage_event
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.congestion import CongestionMap
from tollgate_core.engines.pricing import Pricing, resolve
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
    BucketKey,
    BucketTerms,
    PaidKey,
    RatedRow,
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


@dataclass
class _Work:
    """Mutable state of one batch while it is rated."""

    allowances: dict[BucketKey, tuple[int, int, int]]
    paid: dict[PaidKey, int]
    balances: dict[str, AccountState]
    rated: list[RatedRow] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    rejects: list[tuple[str, UsageRejected]] = field(default_factory=list)
    allowance_changed: set[BucketKey] = field(default_factory=set)
    paid_changed: set[PaidKey] = field(default_factory=set)
    offers: dict[uuid.UUID, tuple[uuid.UUID, CompiledOffer]] = field(default_factory=dict)
    """subscription → (customer, offer) of every subscription rated in the batch"""
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        self.allowances_before = dict(self.allowances)
        self.balances_before = dict(self.balances)


def message_key(msg: Message, index: int) -> str:
    """Idempotency key of a message whose body could not be parsed: its Nats-Msg-Id."""
    header = msg.header or {}
    return header.get("Nats-Msg-Id") or f"unkeyed:{msg.subject}:{index}"


class ChargingEngine:
    """Rates usage events of one tenant."""

    def __init__(self, settings: ChargingSettings, pool: Pool,
                 congestion: CongestionMap | None = None) -> None:
        self.settings = settings
        self.congestion = congestion or CongestionMap()
        self.tenant = settings.tenant
        self.pool = pool
        self.catalog = CatalogCache(settings.tenant)
        self.outbox_wake = asyncio.Event()

    @property
    def consumer(self) -> str:
        return f"{self.settings.consumer}-{self.tenant}"

    async def process(self, messages: Sequence[Message]) -> BatchOutcome:
        """Rate one batch in one transaction. The caller acks the messages after this returns."""
        started = time.perf_counter()
        parsed: dict[str, UsageEvent | UsageRejected] = {}
        payloads: dict[str, Message] = {}
        for index, msg in enumerate(messages):
            try:
                event = parse_usage_event(msg.data, self.tenant)
                key = event.id
                parsed.setdefault(key, event)
            except UsageRejected as rejected:
                key = message_key(msg, index)
                parsed.setdefault(key, rejected)
            payloads.setdefault(key, msg)
        outcome = BatchOutcome()
        async with tenant_tx(self.pool, self.tenant) as conn:
            await self.catalog.refresh(conn)
            fresh = await rating_repo.claim_inbox(conn, self.tenant, self.consumer, list(parsed))
            outcome.duplicates = len(messages) - len(fresh)
            events = [e for k, e in parsed.items() if k in fresh and isinstance(e, UsageEvent)]
            rejects = [(k, e) for k, e in parsed.items()
                       if k in fresh and isinstance(e, UsageRejected)]
            work = await self._rate(conn, events)
            work.rejects.extend(rejects)
            await self._write(conn, work, payloads, outcome)
        if work.transfers or work.rejects:
            self.outbox_wake.set()
        elapsed = time.perf_counter() - started
        BATCH_SECONDS.labels(self.tenant).observe(elapsed)
        EVENTS_RATED.labels(self.tenant).inc(outcome.rated)
        EVENTS_DUPLICATE.labels(self.tenant).inc(outcome.duplicates)
        for _, refusal in work.rejects:
            EVENTS_DEAD_LETTERED.labels(self.tenant, refusal.reason.value).inc()
        return outcome

    async def _rate(self, conn: Connection, events: list[UsageEvent]) -> _Work:
        subs_by_subscriber = await rating_repo.active_subscriptions(
            conn, sorted({e.subscriber for e in events}))
        pricings: dict[str, Pricing] = {}
        early_rejects: list[tuple[str, UsageRejected]] = []
        wanted_allowances: dict[BucketKey, BucketTerms] = {}
        wanted_paid: list[PaidKey] = []
        accounts: list[str] = []
        for event in events:
            try:
                pricing = resolve(self.catalog, event.subscriber,
                                  subs_by_subscriber.get(event.subscriber), event.start_time)
            except UsageRejected as rejected:
                early_rejects.append((event.id, rejected))
                continue
            pricings[event.id] = pricing
            wanted_allowances.update(pricing.allowance_keys(event.service))
            paid_key = pricing.paid_key(event.service)
            if paid_key is not None:
                wanted_paid.append(paid_key)
            accounts.append(customer_account(str(pricing.owner.customer_id)))
        work = _Work(
            allowances=await rating_repo.lock_allowances(conn, self.tenant, wanted_allowances),
            paid=await rating_repo.lock_paid_usage(conn, self.tenant, wanted_paid),
            balances=await rating_repo.lock_balances(conn, accounts),
        )
        work.rejects.extend(early_rejects)
        for event in events:
            if event.id in pricings:
                try:
                    self._rate_one(event, pricings[event.id], work)
                except UsageRejected as rejected:
                    work.rejects.append((event.id, rejected))
        return work

    def _rate_one(self, event: UsageEvent, pricing: Pricing, work: _Work) -> None:
        for sub, offer in pricing.offers:
            work.offers[sub.subscription_id] = (sub.customer_id, offer)
        work.timezone = pricing.catalog.timezone
        buckets = []
        for key, _ in pricing.allowance_keys(event.service):
            quantity, used, reserved = work.allowances[key]
            buckets.append(AllowanceBucket(key[0], key[1], key[2], quantity, used, reserved))
        priced = pricing.tariff(event.service)
        paid_key = pricing.paid_key(event.service)
        already_paid = work.paid[paid_key] if paid_key else 0
        factor, applied = pricing.factors(event.service, event.attributes, self.congestion)
        rating = rate(event.quantity, buckets, priced[1] if priced else None, already_paid,
                      pricing.when(), factor)
        if rating is None:
            raise UsageRejected(RejectReason.NO_PRICE,
                                f"no usage price for {event.service} beyond the allowances")
        for draw in rating.draws:
            key = (draw.subscription_id, draw.allowance, draw.period_start)
            quantity, used, reserved = work.allowances[key]
            work.allowances[key] = (quantity, used + draw.units, reserved)
            work.allowance_changed.add(key)
        if paid_key is not None and rating.chargeable_units:
            work.paid[paid_key] = already_paid + rating.chargeable_units
            work.paid_changed.add(paid_key)
        owner = pricing.owner_for(event.service)
        amount = rating.amount_micros
        work.rated.append(RatedRow(
            uuid.UUID(event.id), owner.subscription_id, owner.customer_id, event.service.value,
            event.quantity, sum(d.units for d in rating.draws), rating.chargeable_units, amount,
            pricing.catalog.currency, rating.price_name, pricing.revision, event.start_time,
            applied))
        if amount:
            self._charge(event.id, owner, amount, pricing.catalog.currency, work)

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
        await rating_repo.insert_rated(conn, self.tenant, work.rated)
        await rating_repo.save_allowances(
            conn, {k: work.allowances[k][1] for k in work.allowance_changed})
        await rating_repo.save_paid_usage(conn, {k: work.paid[k] for k in work.paid_changed})
        work.transfers += await accruals.accrue(conn, self.tenant, self.catalog.get, [
            accruals.revenue_of(r, work.offers[r.subscription_id][1].name) for r in work.rated])
        balances = await rating_repo.post_transfers(conn, self.tenant, work.transfers)
        await thresholds_repo.record(conn, self.tenant, self._crossings(work, balances))
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
                "currency": work.rated[0].currency if work.rated else None, "cause": "usage"})
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
            quantity, before, _ = work.allowances_before[key]
            after = work.allowances[key][1]
            crossings.extend(
                Crossing(subscription_id, customer_id, rule, period,
                         {"usedUnits": after, "quantity": quantity})
                for rule in crossed_allowance(offer.thresholds, allowance, quantity, before,
                                              after))
        month = period_start(datetime.now(UTC), Period.MONTH, work.timezone)
        for customer_id, offer in set(work.offers.values()):
            account = customer_account(str(customer_id))
            if account in balances and account in work.balances_before:
                crossings.extend(
                    Crossing(customer_id, customer_id, rule, month,
                             {"balanceMicros": balances[account]})
                    for rule in crossed_balance(offer.thresholds,
                                                work.balances_before[account].balance_micros,
                                                balances[account]))
        return crossings

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await subscription.fetch(self.settings.batch_max,
                                            timeout=self.settings.fetch_timeout_s)
        except TimeoutError:
            return []

    async def run(self, nc: Client, js: JetStreamContext, stop: asyncio.Event,
                  ready: asyncio.Event | None = None) -> None:
        """Pull, rate, commit, ack, until `stop` is set; `ready` is set once consuming."""
        subscription = await js.pull_subscribe(
            f"tg.{self.tenant}.usage.>", durable=self.consumer, stream="USAGE",
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                  ack_wait=self.settings.ack_wait_s,
                                  max_ack_pending=self.settings.batch_max * 20))
        relay = asyncio.create_task(outbox.relay_forever(self.pool, js, self.tenant,
                                                         self.outbox_wake))
        log.info("charging engine started", tenant=self.tenant, consumer=self.consumer)
        if ready is not None:
            ready.set()
        # Fetch the next batch while this one is rated and committed: the database and
        # Python then work at the same time instead of taking turns.
        next_batch = asyncio.create_task(self._fetch(subscription))
        try:
            while not stop.is_set():
                messages = await next_batch
                next_batch = asyncio.create_task(self._fetch(subscription))
                if not messages:
                    continue
                outcome = await self.process(messages)
                for msg in messages:
                    await msg.ack()
                await nc.flush()
                log.debug("batch rated", tenant=self.tenant, rated=outcome.rated,
                          dead_lettered=outcome.dead_lettered, duplicates=outcome.duplicates)
        finally:
            next_batch.cancel()
            await asyncio.gather(next_batch, return_exceptions=True)
            await subscription.unsubscribe()
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)

