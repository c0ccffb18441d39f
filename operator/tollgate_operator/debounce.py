"""Coalesce bursts of triggers per key into one run at a time (child watch → owner reconcile)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
log = logging.getLogger(__name__)


class Debouncer(Generic[K]):
    """`poke(key)` runs `action(key)` soon; pokes during a run cause exactly one more run.

    Best effort by design: a failed run is logged, and the caller keeps a slower path that
    guarantees convergence (the Tenant timer).
    """

    def __init__(self, action: Callable[[K], Awaitable[None]], delay_s: float = 0.1,
                 failures: tuple[type[BaseException], ...] = (Exception,)) -> None:
        self._action = action
        self._delay_s = delay_s
        self._failures = failures
        self._dirty: set[K] = set()
        self._tasks: dict[K, asyncio.Task[None]] = {}

    def poke(self, key: K) -> None:
        self._dirty.add(key)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._run(key), name=f"debounce {key}")

    async def _run(self, key: K) -> None:
        try:
            while key in self._dirty:
                await asyncio.sleep(self._delay_s)  # let the burst finish
                self._dirty.discard(key)
                try:
                    await self._action(key)
                except self._failures as exc:
                    log.warning("reconcile of %s failed, the resync timer will retry: %s",
                                key, exc)
        finally:
            self._tasks.pop(key, None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
