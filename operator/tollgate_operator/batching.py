"""Publish concurrent Offer/PartnerAgreement changes of one tenant as one catalog revision.

A revision is a whole-tenant snapshot (ADR 0003), so publishing N offers one by one costs
O(N²); Kopf handles objects concurrently, so changes arriving together (a GitOps sync, a bulk
apply) are queued per tenant and published by one worker: whatever queued while the previous
publish ran becomes the next revision. A batch that does not compile is split in halves until
the offending resources are alone; those are published once more on their own after the rest,
so each gets its own precise errors. Nothing waits artificially: a lone change is published at
once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from tollgate_core import catalog_service
from tollgate_core.catalog_service import PublishResult
from tollgate_core.resources import OfferSpec, PartnerAgreementSpec
from tollgate_core.store.db import Pool

BATCH_MAX = 256
"""Resources per revision at most: bounds one transaction's size and a split's depth."""


@dataclass(slots=True)
class _Change:
    name: str
    spec: OfferSpec | PartnerAgreementSpec
    done: asyncio.Future[PublishResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def deliver(self, result: PublishResult | BaseException) -> None:
        if self.done.done():  # the waiting handler was cancelled
            return
        if isinstance(result, BaseException):
            self.done.set_exception(result)
        else:
            self.done.set_result(result)


class PublishBatcher:
    """One publishing worker per (database, tenant); callers await their own result."""

    def __init__(self, batch_max: int = BATCH_MAX) -> None:
        self._batch_max = batch_max
        self._queues: dict[tuple[int, str], list[_Change]] = {}
        self._workers: dict[tuple[int, str], asyncio.Task[None]] = {}

    async def apply_offer(self, pool: Pool, tenant: str, name: str,
                          spec: OfferSpec) -> PublishResult:
        return await self._submit(pool, tenant, _Change(name, spec))

    async def apply_partner(self, pool: Pool, tenant: str, name: str,
                            spec: PartnerAgreementSpec) -> PublishResult:
        return await self._submit(pool, tenant, _Change(name, spec))

    async def _submit(self, pool: Pool, tenant: str, change: _Change) -> PublishResult:
        key = (id(pool), tenant)
        self._queues.setdefault(key, []).append(change)
        if key not in self._workers:
            self._workers[key] = asyncio.create_task(self._drain(key, pool, tenant),
                                                     name=f"publish {tenant}")
        return await change.done

    async def _drain(self, key: tuple[int, str], pool: Pool, tenant: str) -> None:
        try:
            while queue := self._queues.get(key):
                batch, queue[:] = queue[:self._batch_max], queue[self._batch_max:]
                await self._publish(pool, tenant, batch)
        finally:
            self._queues.pop(key, None)
            self._workers.pop(key, None)

    async def _publish(self, pool: Pool, tenant: str, batch: Sequence[_Change]) -> None:
        try:
            rejected = await self._publish_group(pool, tenant, batch)
            for change, result in rejected:
                if len(batch) > 1:  # alone again, after everything else went in
                    result = await self._publish_one(pool, tenant, change)
                change.deliver(result)
        except BaseException as exc:  # an outage or an unknown tenant: every waiter learns it
            for change in batch:
                change.deliver(exc)
            if not isinstance(exc, Exception):
                raise

    async def _publish_group(self, pool: Pool, tenant: str, group: Sequence[_Change]
                             ) -> list[tuple[_Change, PublishResult]]:
        """Publish `group` as one revision if it compiles; return the changes that do not."""
        if len(group) == 1:
            result = await self._publish_one(pool, tenant, group[0])
            if result.valid:
                group[0].deliver(result)
                return []
            return [(group[0], result)]
        offers = {c.name: c.spec for c in group if isinstance(c.spec, OfferSpec)}
        partners = {c.name: c.spec for c in group if isinstance(c.spec, PartnerAgreementSpec)}
        result = await catalog_service.apply_catalog(pool, tenant, offers, partners)
        if result.valid:
            for change in group:
                change.deliver(PublishResult(result.revision, result.created))
            return []
        half = len(group) // 2
        return [*await self._publish_group(pool, tenant, group[:half]),
                *await self._publish_group(pool, tenant, group[half:])]

    @staticmethod
    async def _publish_one(pool: Pool, tenant: str, change: _Change) -> PublishResult:
        if isinstance(change.spec, OfferSpec):
            return await catalog_service.apply_offer(pool, tenant, change.name, change.spec)
        return await catalog_service.apply_partner(pool, tenant, change.name, change.spec)

    async def close(self) -> None:
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
