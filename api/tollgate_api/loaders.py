"""DataLoaders: every customer field is loaded for all customers of a request at once.

Each loader's batch is one read-only transaction with one statement (BEGIN and the tenant
setting travel together, then the query, then COMMIT), so a request costs a fixed number of
round trips whether it shows one customer or a page of them, and whatever the page sizes.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from strawberry.dataloader import DataLoader

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


class Loaders:
    def __init__(self, pool: Pool, tenant: str) -> None:
        self._pool = pool
        self._tenant = tenant
        self.customer = self._optional(queries.customers)
        self.subscriptions: DataLoader[uuid.UUID, list[SubscriptionRow]] = self._by_id(
            queries.subscriptions, [])
        self.balance = self._optional(queries.balances)
        self.allowances: DataLoader[uuid.UUID, list[AllowanceRow]] = self._by_id(
            queries.current_allowances, [])
        self.consent: DataLoader[uuid.UUID, ConsentState] = self._by_id(
            queries.consent_states, ConsentState(None, None, None))
        self.usage: DataLoader[PageKey, list[RatedRow]] = self._pages(queries.rated_usage)
        self.orders: DataLoader[PageKey, list[OrderRow]] = self._pages(queries.orders)
        self.consent_history: DataLoader[PageKey, list[ConsentRow]] = self._pages(
            queries.consent_history)
        self.invoices: DataLoader[InvoicePageKey, list[InvoiceRow]] = self._pages(
            queries.invoice_pages)
        self.invoice: DataLoader[uuid.UUID, InvoiceRow | None] = self._optional(
            queries.invoices)
        self.invoice_lines: DataLoader[uuid.UUID, list[InvoiceLineRow]] = self._by_id(
            queries.invoice_lines, [])
        self.tenant_spec: DataLoader[str, TenantSpec | None] = self._optional(
            queries.tenant_specs)

    def _by_id(self, query: Callable[[Connection, Sequence[K]], Awaitable[dict[K, V]]],
               missing: V) -> DataLoader[K, V]:
        async def load(keys: list[K]) -> list[V]:
            async with tenant_tx(self._pool, self._tenant, readonly=True) as conn:
                found = await query(conn, keys)
            return [found.get(k, missing) for k in keys]

        return DataLoader(load_fn=load)

    def _optional(self, query: Callable[[Connection, Sequence[K]], Awaitable[dict[K, V]]]
                  ) -> DataLoader[K, V | None]:
        async def load(keys: list[K]) -> list[V | None]:
            async with tenant_tx(self._pool, self._tenant, readonly=True) as conn:
                found = await query(conn, keys)
            return [found.get(k) for k in keys]

        return DataLoader(load_fn=load)

    def _pages(self, query: Callable[[Connection, Sequence[K]], Awaitable[list[V]]]
               ) -> DataLoader[K, V]:
        async def load(keys: list[K]) -> list[V]:
            async with tenant_tx(self._pool, self._tenant, readonly=True) as conn:
                return await query(conn, keys)

        return DataLoader(load_fn=load)
