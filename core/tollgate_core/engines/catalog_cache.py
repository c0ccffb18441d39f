"""Compiled catalog revisions of one tenant, hot-loaded as new revisions appear."""

from __future__ import annotations

import asyncio
import bisect
import time
from datetime import datetime

from tollgate_core.domain.catalog import Catalog, compile_catalog
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Connection


class CatalogCache:
    """Revisions sorted by number; `at(when)` gives the revision in force at `when`."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self._numbers: list[int] = []
        self._published: list[datetime] = []
        self._catalogs: dict[int, Catalog] = {}
        self._loading = asyncio.Lock()  # offline and online charging share one cache
        self._checked_at = float("-inf")

    @property
    def latest(self) -> int:
        return self._numbers[-1] if self._numbers else 0

    async def refresh(self, conn: Connection, max_age_s: float = 0.0) -> int:
        """Load revisions newer than the latest known; cheap when there are none.

        With `max_age_s`, skip the check when the last one is more recent than that (online
        charging calls this per request)."""
        now = time.monotonic()
        if max_age_s and self._numbers and now - self._checked_at < max_age_s:
            return 0
        async with self._loading:
            loaded = await self._refresh(conn)
            self._checked_at = now
            return loaded

    async def _refresh(self, conn: Connection) -> int:
        newest = await conn.fetchval(
            "SELECT max(revision) FROM catalog_revisions WHERE tenant_id = $1", self.tenant)
        if newest is None or newest <= self.latest:
            return 0
        loaded = await catalog_repo.all_revisions(conn, self.tenant, after=self.latest)
        for stored in loaded:
            self._catalogs[stored.revision] = compile_catalog(stored.source)
            self._numbers.append(stored.revision)
            self._published.append(stored.published_at)
        return len(loaded)

    def all(self) -> dict[int, Catalog]:
        return dict(self._catalogs)

    def at(self, when: datetime) -> tuple[int, Catalog] | None:
        """The latest revision published at or before `when`; the first one for older events."""
        if not self._numbers:
            return None
        index = max(bisect.bisect_right(self._published, when) - 1, 0)
        number = self._numbers[index]
        return number, self._catalogs[number]

    def get(self, revision: int) -> Catalog | None:
        return self._catalogs.get(revision)
