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
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from tollgate_core.domain.catalog import Catalog, CompiledOffer
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
from tollgate_core.domain.usage import RejectReason, UsageEvent, UsageRejected, parse_usage_event
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.observability import (
    BATCH_SECONDS,
    EVENTS_DEAD_LETTERED,
    EVENTS_DUPLICATE,
    EVENTS_RATED,
)
from tollgate_core.resources.offer import Period
from tollgate_core.settings import ChargingSettings
from tollgate_core.store import outbox, rating_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx
from tollgate_core.store.rating_repo import ActiveSubscription, BucketKey, PaidKey, RatedRow

log = structlog.get_logger(__name__)
_MONTH = Period.MONTH  # paid-usage tiers count per calendar month of the tenant's timezone


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

    allowances: dict[BucketKey, tuple[int, int]]
    paid: dict[PaidKey, int]
    balances: dict[str, tuple[int, int | None]]
    rated: list[RatedRow] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    rejects: list[tuple[str, UsageRejected]] = field(default_factory=list)
    allowance_changed: set[BucketKey] = field(default_factory=set)
    paid_changed: set[PaidKey] = field(default_factory=set)


def message_key(msg: Message, index: int) -> str:
    """Idempotency key of a message whose body could not be parsed: its Nats-Msg-Id."""
    header = msg.header or {}
    return header.get("Nats-Msg-Id") or f"unkeyed:{msg.subject}:{index}"


class ChargingEngine:
    """Rates usage events of one tenant."""

    def __init__(self, settings: ChargingSettings, pool: Pool) -> None:
        self.settings = settings
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

    def _plan_for(self, event: UsageEvent, subs: list[ActiveSubscription]
                  ) -> tuple[int, Catalog, list[tuple[ActiveSubscription, CompiledOffer]]]:
        found = self.catalog.at(event.start_time)
        if found is None:
            raise UsageRejected(RejectReason.NO_VALID_OFFER, "the tenant has no catalog yet")
        revision, catalog = found
        offers = [(s, catalog.offers[s.offer]) for s in subs if s.offer in catalog.offers]
        if not offers:
            raise UsageRejected(RejectReason.NO_VALID_OFFER,
                                f"no subscribed offer exists in catalog revision {revision}")
        return revision, catalog, offers

    async def _rate(self, conn: Connection, events: list[UsageEvent]) -> _Work:
        subs_by_subscriber = await rating_repo.active_subscriptions(
            conn, sorted({e.subscriber for e in events}))
        plans: dict[str, tuple[int, Catalog, list[tuple[ActiveSubscription, CompiledOffer]]]] = {}
        early_rejects: list[tuple[str, UsageRejected]] = []
        wanted_allowances: dict[BucketKey, int] = {}
        wanted_paid: list[PaidKey] = []
        accounts: list[str] = []
        for event in events:
            subs = subs_by_subscriber.get(event.subscriber)
            try:
                if not subs:
                    raise UsageRejected(RejectReason.UNKNOWN_SUBSCRIBER,
                                        f"no active subscription for {event.subscriber!r}")
                plan = self._plan_for(event, subs)
            except UsageRejected as rejected:
                early_rejects.append((event.id, rejected))
                continue
            plans[event.id] = plan
            _, catalog, offers = plan
            for sub, offer in offers:
                for rule in offer.allowances:
                    if rule.service is event.service:
                        start = period_start(event.start_time, rule.period, catalog.timezone)
                        wanted_allowances[(sub.subscription_id, rule.name, start)] = rule.quantity
                if event.service in offer.usage:
                    start = period_start(event.start_time, _MONTH, catalog.timezone)
                    wanted_paid.append((sub.subscription_id, event.service.value, start))
            accounts.append(customer_account(str(offers[0][0].customer_id)))
        work = _Work(
            allowances=await rating_repo.lock_allowances(conn, self.tenant, wanted_allowances),
            paid=await rating_repo.lock_paid_usage(conn, self.tenant, wanted_paid),
            balances=await rating_repo.lock_balances(conn, accounts),
        )
        work.rejects.extend(early_rejects)
        for event in events:
            if event.id in plans:
                try:
                    self._rate_one(event, *plans[event.id], work)
                except UsageRejected as rejected:
                    work.rejects.append((event.id, rejected))
        return work

    def _rate_one(self, event: UsageEvent, revision: int, catalog: Catalog,
                  offers: list[tuple[ActiveSubscription, CompiledOffer]], work: _Work) -> None:
        buckets = []
        for sub, offer in offers:
            for rule in offer.allowances:
                if rule.service is event.service:
                    key = (sub.subscription_id, rule.name,
                           period_start(event.start_time, rule.period, catalog.timezone))
                    quantity, used = work.allowances[key]
                    buckets.append(AllowanceBucket(key[0], key[1], key[2], quantity, used))
        priced = next(((s, o) for s, o in offers if event.service in o.usage), None)
        tariff = priced[1].usage[event.service] if priced else None
        paid_key = None
        if priced is not None:
            paid_key = (priced[0].subscription_id, event.service.value,
                        period_start(event.start_time, _MONTH, catalog.timezone))
        already_paid = work.paid[paid_key] if paid_key else 0
        rating = rate(event.quantity, buckets, tariff, already_paid)
        if rating is None:
            raise UsageRejected(RejectReason.NO_PRICE,
                                f"no usage price for {event.service} beyond the allowances")
        for draw in rating.draws:
            key = (draw.subscription_id, draw.allowance, draw.period_start)
            quantity, used = work.allowances[key]
            work.allowances[key] = (quantity, used + draw.units)
            work.allowance_changed.add(key)
        if paid_key is not None and rating.chargeable_units:
            work.paid[paid_key] = already_paid + rating.chargeable_units
            work.paid_changed.add(paid_key)
        owner = (priced or offers[0])[0]
        amount = rating.amount_micros
        work.rated.append(RatedRow(
            uuid.UUID(event.id), owner.subscription_id, owner.customer_id, event.service.value,
            event.quantity, sum(d.units for d in rating.draws), rating.chargeable_units, amount,
            catalog.currency, rating.price_name, revision, event.start_time))
        if amount:
            self._charge(event.id, owner, amount, catalog.currency, work)

    def _charge(self, event_id: str, owner: ActiveSubscription, amount: int, currency: str,
                work: _Work) -> None:
        account = customer_account(str(owner.customer_id))
        revenue = revenue_account("usage")
        balance, floor = work.balances[account]
        if owner.payment_type == "prepaid" and floor is not None:
            from_balance, overage = split_prepaid(amount, balance, floor)
        else:
            from_balance, overage = amount, 0
        if from_balance:
            work.transfers.append(Transfer(transfer_id(event_id, "charge"), account, revenue,
                                           from_balance, currency, TransferCode.USAGE, event_id))
            work.balances[account] = (balance - from_balance, floor)
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
        balances = await rating_repo.post_transfers(conn, self.tenant, work.transfers)
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

    async def run(self, nc: Client, js: JetStreamContext, stop: asyncio.Event) -> None:
        """Pull, rate, commit, ack, until `stop` is set."""
        subscription = await js.pull_subscribe(
            f"tg.{self.tenant}.usage.>", durable=self.consumer, stream="USAGE",
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                  ack_wait=self.settings.ack_wait_s,
                                  max_ack_pending=self.settings.batch_max * 20))
        relay = asyncio.create_task(outbox.relay_forever(self.pool, js, self.tenant,
                                                         self.outbox_wake))
        log.info("charging engine started", tenant=self.tenant, consumer=self.consumer)
        try:
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(self.settings.batch_max,
                                                        timeout=self.settings.fetch_timeout_s)
                except TimeoutError:
                    continue
                outcome = await self.process(messages)
                for msg in messages:
                    await msg.ack()
                await nc.flush()
                log.debug("batch rated", tenant=self.tenant, rated=outcome.rated,
                          dead_lettered=outcome.dead_lettered, duplicates=outcome.duplicates)
        finally:
            await subscription.unsubscribe()
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)

