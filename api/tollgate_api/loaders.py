"""DataLoaders: every customer field is loaded for all customers of a request at once.

Each loader's batch is one statement, and a request's batches share one read-only
transaction of its tenant on one pool connection (`Waves`): BEGIN and the tenant setting
travel together, then each batch's statement, then COMMIT with the session reset. So a
request costs a fixed number of round trips whether it shows one customer or a page of them,
and whatever the page sizes: the dashboard's 8 kinds of field are 10 statements.

The statements of one transaction run their generic plans: they are lookups by key, and
PostgreSQL would otherwise plan the ones taking arrays again at every execution.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, Protocol, TypeVar

from tollgate_core.resources.tenant import TenantSpec
from tollgate_core.store import queries
from tollgate_core.store.accounts_repo import SubscriptionRow
from tollgate_core.store.care_repo import ConsentRow, OrderRow
from tollgate_core.store.db import Connection, Pool, tenant_tx
from tollgate_core.store.queries import (
    AllowanceRow,
    ConsentState,
    InvoiceLineRow,
    InvoicePageKey,
    InvoiceRow,
    PageKey,
)
from tollgate_core.store.rating_repo import RatedRow

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class Batch(Protocol):
    """What a wave runs: one statement on the wave's connection."""

    async def run(self, conn: Connection) -> None: ...

    def fail(self, exc: BaseException) -> None: ...


class Waves:
    """Runs the batches asked for in one turn of the event loop together, one statement
    after the other on one pool connection, in a read-only transaction of the tenant (RLS).

    The transaction stays open for the next wave while one may come: a request's levels
    (the customer, then its lists, then its invoices' lines) follow each other within a few
    turns of the event loop. When nothing has been asked for during `IDLE_TURNS` turns, it
    is committed and the connection goes back to the pool, whatever else the request is
    doing — so holding it can never make a request wait on itself (for instance, a resolver
    of the same request waiting for a pool connection of its own)."""

    IDLE_TURNS = 8

    def __init__(self, pool: Pool, tenant: str) -> None:
        self._pool = pool
        self._tenant = tenant
        self._next: list[Batch] | None = None
        self._running: asyncio.Task[None] | None = None
        self._held: tuple[AbstractAsyncContextManager[Connection], Connection] | None = None
        self._idle = 0
        self._closing: set[asyncio.Task[None]] = set()

    def enqueue(self, batch: Batch) -> None:
        """Run `batch` in the next wave (the current one, if it is still running)."""
        if self._next is None:
            self._next = []
        self._next.append(batch)
        if self._running is None:
            # The resolvers of one level ask in the same turn; the task starts in the next.
            self._running = asyncio.get_running_loop().create_task(self._run())

    def read(self, read: Callable[[Connection], Awaitable[T]]) -> asyncio.Future[T]:
        """`read(connection)` in the next wave; its result, or its exception."""
        single = _Single(read)
        self.enqueue(single)
        return single.future

    async def _run(self) -> None:
        pending: list[Batch] = []
        try:
            while self._next is not None:
                pending += self._next
                self._next = None
                while pending:
                    batch = pending.pop(0)
                    try:
                        await batch.run(await self._connection())
                    except Exception as exc:  # handed to the batch that failed
                        # The transaction is rolled back; the other batches run in another.
                        batch.fail(exc)
                        await self._drop(exc)
        finally:
            self._running = None
            for batch in pending:  # the wave was cancelled: nobody waits in vain
                batch.fail(RuntimeError("the read was cancelled"))
            self._idle = 0
            if self._held is not None:
                asyncio.get_running_loop().call_soon(self._tick)

    async def _connection(self) -> Connection:
        if self._held is None:
            transaction = tenant_tx(self._pool, self._tenant, readonly=True,
                                    generic_plans=True)
            self._held = (transaction, await transaction.__aenter__())
        return self._held[1]

    async def _drop(self, exc: BaseException | None) -> None:
        """End the held transaction: COMMIT, or ROLLBACK with `exc`; the connection goes
        back to the pool."""
        if self._held is None:
            return
        transaction, self._held = self._held[0], None
        if exc is None:
            await transaction.__aexit__(None, None, None)
        else:
            await transaction.__aexit__(type(exc), exc, exc.__traceback__)

    def release(self) -> None:
        """Nothing more will be asked for (the operation has ended): the held transaction is
        committed now, in a task of its own, instead of after the idle turns."""
        if self._running is None and self._held is not None:
            self._idle = self.IDLE_TURNS - 1
            self._tick()

    def _tick(self) -> None:
        if self._running is not None or self._next is not None or self._held is None:
            return  # a wave runs or is coming: it ticks again when it is done
        self._idle += 1
        loop = asyncio.get_running_loop()
        if self._idle < self.IDLE_TURNS:
            loop.call_soon(self._tick)
            return
        closing = loop.create_task(self._drop(None))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)


class _Single(Generic[T]):
    def __init__(self, read: Callable[[Connection], Awaitable[T]]) -> None:
        self.read = read
        self.future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

    async def run(self, conn: Connection) -> None:
        if not self.future.done():
            result = await self.read(conn)
            if not self.future.done():
                self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Loader(Generic[K, V]):
    """A DataLoader of one request: the keys asked for until the next wave are read with one
    statement (`fetch`: the values in the keys' order), and each key's result is kept for
    the request. Its batches run in the request's waves directly, without a task of their
    own."""

    def __init__(self, waves: Waves,
                 fetch: Callable[[Connection, list[K]], Awaitable[list[V]]]) -> None:
        self._waves = waves
        self._fetch = fetch
        self._cache: dict[K, asyncio.Future[V]] = {}
        self._keys: list[K] = []
        self._futures: list[asyncio.Future[V]] = []

    def load(self, key: K) -> asyncio.Future[V]:
        known = self._cache.get(key)
        if known is not None and not known.cancelled():
            return known
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._cache[key] = future
        if not self._keys:
            self._waves.enqueue(self)
        self._keys.append(key)
        self._futures.append(future)
        return future

    def load_many(self, keys: Iterable[K]) -> Awaitable[list[V]]:
        return asyncio.gather(*map(self.load, keys))

    def prime(self, key: K, value: V) -> None:
        """Known already (e.g. read with a list): no statement for it."""
        if key not in self._cache:
            future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
            future.set_result(value)
            self._cache[key] = future

    async def run(self, conn: Connection) -> None:
        keys, futures = self._keys, self._futures
        self._keys, self._futures = [], []
        live = [(key, future) for key, future in zip(keys, futures, strict=True)
                if not future.done()]  # done: its caller gave up (cancelled)
        if not live:
            return
        try:
            values = await self._fetch(conn, [key for key, _ in live])
        except BaseException as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (_, future), value in zip(live, values, strict=True):
            if not future.done():
                future.set_result(value)

    def fail(self, exc: BaseException) -> None:
        futures, self._keys, self._futures = self._futures, [], []
        for future in futures:
            if not future.done():
                future.set_exception(exc)


def _by_id(waves: Waves, query: Callable[[Connection, Sequence[K]], Awaitable[dict[K, V]]],
           missing: V) -> Loader[K, V]:
    async def fetch(conn: Connection, keys: list[K]) -> list[V]:
        found = await query(conn, keys)
        return [found.get(k, missing) for k in keys]

    return Loader(waves, fetch)


def _optional(waves: Waves, query: Callable[[Connection, Sequence[K]], Awaitable[dict[K, V]]]
              ) -> Loader[K, V | None]:
    async def fetch(conn: Connection, keys: list[K]) -> list[V | None]:
        found = await query(conn, keys)
        return [found.get(k) for k in keys]

    return Loader(waves, fetch)


def _pages(waves: Waves, query: Callable[[Connection, Sequence[K]], Awaitable[list[V]]]
           ) -> Loader[K, V]:
    return Loader(waves, query)


class Loaders:
    """The DataLoaders of one request (their functions hold the waves, never the Loaders, so
    a finished request's objects are freed by reference counting, not left to the cyclic
    garbage collector)."""

    def __init__(self, pool: Pool, tenant: str) -> None:
        self.waves = waves = Waves(pool, tenant)
        self.customer = _optional(waves, queries.customers)
        self.subscriptions: Loader[uuid.UUID, list[SubscriptionRow]] = _by_id(
            waves, queries.subscriptions, [])
        self.balance = _optional(waves, queries.balances)
        self.allowances: Loader[uuid.UUID, list[AllowanceRow]] = _by_id(
            waves, queries.current_allowances, [])
        self.consent: Loader[uuid.UUID, ConsentState] = _by_id(
            waves, queries.consent_states, ConsentState(None, None, None))
        self.usage: Loader[PageKey, list[RatedRow]] = _pages(waves, queries.rated_usage)
        self.orders: Loader[PageKey, list[OrderRow]] = _pages(waves, queries.orders)
        self.consent_history: Loader[PageKey, list[ConsentRow]] = _pages(
            waves, queries.consent_history)
        self.invoices: Loader[InvoicePageKey, list[InvoiceRow]] = _pages(
            waves, queries.invoice_pages)
        self.invoice: Loader[uuid.UUID, InvoiceRow | None] = _optional(
            waves, queries.invoices)
        self.invoice_lines: Loader[uuid.UUID, list[InvoiceLineRow]] = _by_id(
            waves, queries.invoice_lines, [])
        self.tenant_spec: Loader[str, TenantSpec | None] = _optional(
            waves, queries.tenant_specs)
