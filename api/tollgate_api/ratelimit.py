"""Per-credential rate limiting: one token bucket per caller.

A caller is the credential's tenant and subject; a request without a valid credential is
counted against its client address. Buckets live in the API process: with N replicas a
caller may make up to N times the configured rate (see docs/adr/0009).

`TokenBucket` and `RateLimiter` are pure: time comes from an injected clock, so tests
step the clock instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(slots=True)
class TokenBucket:
    """`burst` tokens at most, refilled continuously at `rate` tokens per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float
    """The clock reading `tokens` was computed at."""

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 when taken, otherwise the seconds until they would be
        there (nothing is taken then)."""
        self.refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        """A full bucket is indistinguishable from a new one, so it can be forgotten."""
        return self.tokens + max(now - self.stamp, 0.0) * self.rate >= self.burst


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int
    """Whole seconds (≥ 1) to wait before the next request may pass; 0 when allowed."""


class RateLimiter:
    """Token buckets by caller key, forgetting callers whose bucket has refilled.

    Buckets are kept in least-recently-used order; each call drops the oldest ones while
    they are full again (idle for `burst / rate` seconds), so memory follows the callers
    active in the last few seconds. `max_keys` bounds it against a flood of new addresses:
    beyond it the least recently seen caller is forgotten (and starts again with a full
    bucket, the lenient side).
    """

    def __init__(self, per_second: float, burst: int, clock: Clock = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if per_second <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate limit needs per_second > 0, burst ≥ 1 and max_keys ≥ 1")
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable) -> Verdict:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.per_second, self.burst, self.burst, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        self._forget(now)
        if wait == 0.0:
            return Verdict(True, 0)
        return Verdict(False, max(1, math.ceil(wait)))

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        while len(buckets) > 1:
            oldest = next(iter(buckets.values()))
            if not (len(buckets) > self._max_keys or oldest.is_full(now)):
                break
            buckets.popitem(last=False)
