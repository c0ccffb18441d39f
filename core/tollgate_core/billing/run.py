"""Bill runs: every account of a tenant billed for one period, in batches, resumable.

Each batch is one transaction: lock the accounts, read what they owe, issue the documents
(numbers taken from the tenant's series in the same transaction), post the ledger transfers
and queue `evt.invoice.issued`. A run killed at any point loses only its open batch; run it
again and it carries on with the accounts that have no document for the period yet, so each
(account, period) is billed exactly once and the numbers stay gapless.

A period is the same local dates for every account of a tenant (the tenant's cycle day), but
it ends at local midnight of each account's timezone. A run given `now` bills only the
accounts whose period is over by then and stays unfinished while others wait; run again
later, it bills those (the same resumption as after a crash).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from tollgate_core.domain.billing import (
    AccountFacts,
    Accounts,
    Bill,
    BillingTerms,
    BillPeriod,
    DocumentKind,
    LineKind,
    TaxTerms,
    UsageTotal,
    bill_account,
    bill_legs,
    has_ended,
    last_ended_period,
    legs,
    local_midnight,
    periods_from,
)
from tollgate_core.domain.catalog import Catalog, percent
from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.ledger import (
    Transfer,
    TransferCode,
    customer_account,
    overage_account,
    revenue_account,
    transfer_id,
)
from tollgate_core.domain.settlement import Revenue
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.observability import BILL_RUN_SECONDS, DOCUMENTS_ISSUED
from tollgate_core.resources.tenant import TenantSpec
from tollgate_core.settlement import accruals
from tollgate_core.store import billing_repo, catalog_repo, outbox, rating_repo
from tollgate_core.store.billing_repo import TENANT_ZONE, AccountToBill, Document
from tollgate_core.store.db import Connection, Pool, tenant_tx

log = structlog.get_logger(__name__)

BATCH_DEFAULT = 500
WORKERS_DEFAULT = 2
"""Batches in flight: their documents are numbered one batch after another (the series row
is locked until commit), but reading and computing overlap with another batch's writes."""
LATE_USAGE_LOOKBACK_DAYS = 92
"""Usage that started up to this long before a period and was rated after the account's
previous document is billed on the next one (older records are not looked for)."""
CATCH_UP_CYCLES = 3
"""Recurring fees of up to this many bill cycles before the period are looked at again (never
cycles before the tenant's first bill run): a subscription start or end back-dated into them
is charged or credited on the next bill. Older corrections need a manual adjustment."""
RETRIES_MAX = 5

ROUNDING_ACCOUNT = revenue_account("rounding")
ONE_TIME_ACCOUNT = revenue_account("oneTime")
PROMOTION_ACCOUNT = "promotion:expense"
TAX_ACCOUNT = "tax:payable"


def series_for(spec: TenantSpec, kind: DocumentKind) -> tuple[str, str]:
    """(series key, bill number prefix): invoices and statements are numbered apart."""
    prefix = spec.billing.invoice_prefix
    return (kind.value, prefix if kind is DocumentKind.INVOICE else f"{prefix}-ST")


def bill_no(prefix: str, period: BillPeriod, number: int) -> str:
    return f"{prefix}-{period.start:%Y}-{number:08d}"


def tax_terms(spec: TenantSpec) -> dict[str, TaxTerms]:
    return {t.category: TaxTerms(t.category, percent(t.rate), t.rate, t.inclusive)
            for t in spec.taxes}


@dataclass
class RunResult:
    period: BillPeriod
    documents: int
    accounts_seen: int
    seconds: float
    complete: bool = True
    waiting_zones: tuple[str, ...] = ()
    """Timezones whose accounts were left for later: the period has not ended there yet."""


@dataclass(frozen=True, slots=True)
class _Context:
    tenant: str
    spec: TenantSpec
    terms: BillingTerms
    start: datetime
    """The period's start in the tenant's timezone (when its fees are shared with partners)."""
    zones: tuple[str, ...] | None
    """Zone keys of the accounts to bill (`TENANT_ZONE` for the tenant's); None: all."""

    def zone_of(self, account: AccountToBill) -> str:
        return account.timezone or self.spec.timezone


async def load_catalogs(pool: Pool, tenant: str) -> dict[int, Catalog]:
    cache = CatalogCache(tenant)
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        await cache.refresh(conn)
    return cache.all()


async def bill_run(pool: Pool, tenant: str, period: BillPeriod, *, batch: int = BATCH_DEFAULT,
                   workers: int = WORKERS_DEFAULT,
                   progress: Callable[[int], None] | None = None,
                   stop_after_batches: int | None = None,
                   now: datetime | None = None) -> RunResult:
    """Bill every account of `tenant` for `period` that has no document for it yet.

    `now`, when given, leaves out the accounts whose period has not ended yet at `now` in
    their timezone (the run is then not finished; run it again later); without it every
    account is billed (an early close). `workers` bill disjoint slices of the accounts at
    once (one reads and computes while another writes); `progress` is called with the
    accounts handled by each batch; `stop_after_batches` ends each worker early (tests of
    resumption)."""
    started = time.perf_counter()
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        if spec is None:
            raise ValueError(f"tenant {tenant!r} does not exist")
        await catalog_repo.upsert_tenant(conn, tenant, spec)  # system accounts of this version
        await billing_repo.start_run(conn, tenant, period.start, period.end)
        first_run = await billing_repo.first_run_start(conn)
        own_zones = await billing_repo.account_timezones(conn) if now is not None else []
    zones: tuple[str, ...] | None = None
    waiting: tuple[str, ...] = ()
    if now is not None:
        keys = [TENANT_ZONE, *own_zones]
        ended = {k: has_ended(period, now, k or spec.timezone) for k in keys}
        zones = tuple(k for k in keys if ended[k])
        waiting = tuple(k or spec.timezone for k in keys if not ended[k])
    catalogs = await load_catalogs(pool, tenant)
    catch_up = periods_from(first_run or period.start, period, CATCH_UP_CYCLES)
    ctx = _Context(tenant, spec, BillingTerms(spec.currency, spec.timezone, period, catalogs,
                                              tax_terms(spec), catch_up),
                   local_midnight(period.start, spec.timezone), zones)
    outcomes = await asyncio.gather(*(
        _worker(pool, ctx, (k, workers), batch, progress, stop_after_batches)
        for k in range(workers)))
    documents = sum(o[0] for o in outcomes)
    seen = sum(o[1] for o in outcomes)
    complete = all(o[2] for o in outcomes) and not waiting
    if complete:
        async with tenant_tx(pool, tenant) as conn:
            await billing_repo.finish_run(conn, period.start)
        BILL_RUN_SECONDS.labels(tenant).observe(time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    log.info("bill run ended", tenant=tenant, period=str(period.start), documents=documents,
             accounts=seen, seconds=round(elapsed, 3), complete=complete,
             waiting_zones=list(waiting))
    return RunResult(period, documents, seen, elapsed, complete, waiting)


async def _worker(pool: Pool, ctx: _Context, share: tuple[int, int], batch: int,
                  progress: Callable[[int], None] | None, stop_after: int | None
                  ) -> tuple[int, int, bool]:
    """(documents, accounts seen, whether the slice is done)."""
    after: uuid.UUID | None = None
    documents = seen = batches = 0
    while stop_after is None or batches < stop_after:
        accounts, issued = await _batch_with_retry(pool, ctx, after, batch, share)
        if not accounts:
            return documents, seen, True
        after = accounts[-1].customer_id
        documents += issued
        seen += len(accounts)
        batches += 1
        if progress is not None:
            progress(len(accounts))
    return documents, seen, False


async def _batch_with_retry(pool: Pool, ctx: _Context, after: uuid.UUID | None, limit: int,
                            share: tuple[int, int]) -> tuple[list[AccountToBill], int]:
    """A batch's transaction may deadlock with rating (both lock accounts); it is rolled
    back whole, so trying again is safe."""
    for attempt in range(1, RETRIES_MAX + 1):
        try:
            async with tenant_tx(pool, ctx.tenant) as conn:
                return await _batch(conn, ctx, after, limit, share)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == RETRIES_MAX:
                raise
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


async def _batch(conn: Connection, ctx: _Context, after: uuid.UUID | None, limit: int,
                 share: tuple[int, int]) -> tuple[list[AccountToBill], int]:
    period = ctx.terms.period
    accounts = await billing_repo.accounts_to_bill(conn, period.start, after, limit, share,
                                                   ctx.zones)
    if not accounts:
        return [], 0
    ids = [a.customer_id for a in accounts]
    zone_of = {a.customer_id: ctx.zone_of(a) for a in accounts}
    # The period and the coverage periods looked at again, as instants of each timezone.
    bounds = {z: period.instants(z) for z in set(zone_of.values())}
    first_coverage = (ctx.terms.catch_up or (period,))[0]
    since = min(local_midnight(first_coverage.start, z) for z in bounds)
    until = max(local_midnight(period.next().end, z) for z in bounds)
    # a batch aggregates ~100 records per account; let the GROUP BY hash in memory rather
    # than sort on disk (the default work_mem is 4 MB)
    await conn.execute("SET LOCAL work_mem = '64MB'")
    # Lock first, read after: rating that touches these accounts either committed before
    # (and is read below) or writes its records later, stamped after `billed_at`.
    states = await rating_repo.lock_balances(conn, [customer_account(str(i)) for i in ids])
    subs = await billing_repo.subscriptions(conn, ids, until, since, zone_of)
    charged = await billing_repo.charged(
        conn, [s.subscription_id for group in subs.values() for s in group],
        [c.start for c in ctx.terms.catch_up] + [period.start, period.end])
    usage: dict[uuid.UUID, list[UsageTotal]] = {}
    for zone, (start, end) in sorted(bounds.items()):  # one statement for the usual batch
        members = ids if len(bounds) == 1 else [i for i in ids if zone_of[i] == zone]
        usage.update(await billing_repo.usage(
            conn, members, start, end, start - timedelta(days=LATE_USAGE_LOOKBACK_DAYS)))
    bills: list[tuple[AccountToBill, Bill]] = []
    for account in accounts:
        bill = bill_account(ctx.terms, AccountFacts(
            account.customer_id, subs.get(account.customer_id, []),
            usage.get(account.customer_id, []), charged))
        if bill.lines:
            bills.append((account, bill))
    docs = await _number(conn, ctx, bills)
    await billing_repo.insert_documents(conn, ctx.tenant, docs)
    transfers: list[Transfer] = []
    for doc, (account, bill) in zip(docs, bills, strict=True):
        state = states.get(customer_account(str(account.customer_id)))
        transfers += _transfers(ctx, doc, bill,
                                state.spendable_micros if state is not None else None)
    transfers += await accruals.accrue(conn, ctx.tenant, ctx.terms.catalogs.get,
                                       _shareable(ctx, docs))
    await rating_repo.post_transfers(conn, ctx.tenant, transfers)
    await outbox.enqueue(conn, [_issued_event(ctx.tenant, d) for d in docs])
    DOCUMENTS_ISSUED.labels(ctx.tenant).inc(len(docs))
    return accounts, len(docs)


async def _number(conn: Connection, ctx: _Context, bills: list[tuple[AccountToBill, Bill]]
                  ) -> list[Document]:
    period = ctx.terms.period
    kinds = [DocumentKind.STATEMENT if a.payment_type == "prepaid" else DocumentKind.INVOICE
             for a, _ in bills]
    next_number: dict[DocumentKind, int] = {}
    for kind in sorted(set(kinds)):
        series, _ = series_for(ctx.spec, kind)
        next_number[kind] = await billing_repo.take_numbers(conn, ctx.tenant, series,
                                                            kinds.count(kind))
    docs = []
    bill_date = period.end
    for kind, (_, bill) in zip(kinds, bills, strict=True):
        series, prefix = series_for(ctx.spec, kind)
        number = next_number[kind]
        next_number[kind] += 1
        is_invoice = kind is DocumentKind.INVOICE
        due = bill_date + timedelta(days=ctx.spec.billing.payment_terms_days) \
            if is_invoice else None
        state = ("settled" if not is_invoice  # a statement: paid from the balance already
                 else "issued" if bill.total_micros > 0 else "paid")
        docs.append(Document(uuid.uuid4(), kind, series, number, bill_no(prefix, period, number),
                             bill, bill_date, due, state))
    return docs


def _transfers(ctx: _Context, doc: Document, bill: Bill, spendable: int | None
               ) -> list[Transfer]:
    customer = customer_account(str(bill.customer_id))
    accounts = Accounts(customer, revenue_account("recurring"), ONE_TIME_ACCOUNT,
                        revenue_account("usage"), ROUNDING_ACCOUNT, PROMOTION_ACCOUNT,
                        TAX_ACCOUNT)
    moves = bill_legs(bill, accounts)
    if spendable is not None:
        # A prepaid balance never goes below its floor: what it cannot pay is receivable.
        owed = sum(m for d, _, m, _ in moves if d == customer) \
            - sum(m for _, c, m, _ in moves if c == customer)
        moves += legs(overage_account(str(bill.customer_id)), customer, owed - spendable,
                      "overage") if owed > spendable else []
    cause = str(doc.invoice_id)
    return [Transfer(transfer_id(cause, name), debit, credit, micros, bill.currency,
                     TransferCode.INVOICE, cause) for debit, credit, micros, name in moves]


_FEE_REVENUE = {LineKind.RECURRING: revenue_account("recurring"),
                LineKind.ONE_TIME: ONE_TIME_ACCOUNT}


def _shareable(ctx: _Context, docs: list[Document]) -> list[Revenue]:
    """Recurring and one-time charges partner agreements may share (their net, before tax;
    discounts are the operator's promotion expense). Each line is its own record, with an id
    derived from the document and line number."""
    when = ctx.start
    return [Revenue(uuid.uuid5(doc.invoice_id, str(n)), line.offer, line.net_micros,
                    line.quantity, when, line.revision, _FEE_REVENUE[line.kind])
            for doc in docs for n, line in enumerate(doc.bill.lines, 1)
            if line.kind in _FEE_REVENUE and line.net_micros > 0]


def _issued_event(tenant: str, doc: Document) -> DomainEvent:
    return DomainEvent.new(tenant, "invoice.issued", {
        "invoiceId": str(doc.invoice_id), "billNo": doc.bill_no, "kind": doc.kind.value,
        "customerId": str(doc.bill.customer_id), "periodStart": doc.bill.period.start.isoformat(),
        "periodEnd": doc.bill.period.end.isoformat(), "currency": doc.bill.currency,
        "totalMicros": doc.bill.total_micros, "taxMicros": doc.bill.tax_micros,
        "dueDate": doc.due_date.isoformat() if doc.due_date else None, "state": doc.state,
    })


def last_closed_period(now: datetime, spec: TenantSpec) -> BillPeriod:
    """The latest bill period that has ended in the tenant's timezone."""
    return last_ended_period(now.astimezone(UTC), spec.billing.cycle_day, spec.timezone)


def periods_ended(now: datetime, spec: TenantSpec, account_zones: list[str]
                  ) -> list[BillPeriod]:
    """The latest period that has ended for some account, in each timezone accounts bill in
    (the tenant's and the accounts' own), oldest first: at most two distinct periods."""
    zones = {spec.timezone, *account_zones}
    return sorted({last_ended_period(now, spec.billing.cycle_day, z) for z in zones})
