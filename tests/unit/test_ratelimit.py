"""The token bucket and the per-caller limiter, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from tollgate_api.ratelimit import RateLimiter, TokenBucket, Verdict


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, tokens=3, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(0.25) == pytest.approx(0.25)  # refused takes take nothing
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)  # refilled to the burst only, then one taken


def test_a_limiter_refuses_past_the_burst_with_a_whole_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=0.5, burst=2, clock=clock)
    assert limiter.take("a") == Verdict(True, 0)
    assert limiter.take("a") == Verdict(True, 0)
    assert limiter.take("a") == Verdict(False, 2)  # 1 token at 0.5/s: 2 s
    clock.now += 1.2
    assert limiter.take("a") == Verdict(False, 1)  # 0.8 s left: rounded up, never 0
    clock.now += 0.8
    assert limiter.take("a") == Verdict(True, 0)


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=50, burst=1, clock=clock)
    assert limiter.take("a").allowed
    assert limiter.take("a") == Verdict(False, 1)  # 20 ms away, still "1"
    slow = RateLimiter(per_second=0.3, burst=1, clock=clock)
    assert slow.take("b").allowed
    assert slow.take("b") == Verdict(False, 4)  # 3.33 s


def test_callers_have_their_own_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=1, burst=1, clock=clock)
    assert limiter.take(("credential", "de", "alice")).allowed
    assert not limiter.take(("credential", "de", "alice")).allowed
    assert limiter.take(("credential", "de", "bob")).allowed
    assert limiter.take(("credential", "fr", "alice")).allowed
    assert limiter.take(("address", "127.0.0.1")).allowed


def test_idle_callers_are_forgotten_and_memory_is_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=10, burst=5, clock=clock, max_keys=100)
    for i in range(50):
        limiter.take(i)
    assert len(limiter) == 50
    clock.now += 0.5  # 5 tokens at 10/s: every bucket is full again
    limiter.take("new")
    assert len(limiter) == 1

    for i in range(1_000):  # a flood of distinct callers within one instant
        limiter.take(("address", str(i)))
    assert len(limiter) == 100


def test_a_busy_caller_is_not_forgotten_while_others_are() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_second=1, burst=2, clock=clock)
    limiter.take("idle")
    for _ in range(3):
        limiter.take("busy")
    clock.now += 1.5  # idle is full again (1 + 1.5); busy has 1.5 of 2
    assert limiter.take("other").allowed
    assert len(limiter) == 2  # idle forgotten
    assert limiter.take("busy").allowed
    assert not limiter.take("busy").allowed  # busy kept its history: 0.5 token left


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="per_second"):
        RateLimiter(per_second=0, burst=10)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(per_second=1, burst=0)
