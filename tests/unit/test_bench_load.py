"""The benchmarks' load shapes: what "kept up" means and how the sustainable maximum is
searched (the figures in bench/RESULTS.md rest on both)."""

from __future__ import annotations

import pytest

from bench.common import Paced, highest_rate


def test_a_run_kept_up_when_its_calls_completed_at_the_rate_they_came() -> None:
    # 400 calls offered at 100/s: done in 4.1 s is keeping pace, in 4.5 s it is not.
    assert Paced(100.0, [5.0] * 400, 4.1).kept_up
    assert not Paced(100.0, [5.0] * 400, 4.5).kept_up


@pytest.mark.parametrize("capacity", [260.0, 420.0, 999.0, 1_150.0])
async def test_the_highest_rate_kept_up_is_found_within_five_percent(capacity: float) -> None:
    tried: list[float] = []

    async def kept_up(rate: float) -> bool:
        tried.append(rate)
        return rate <= capacity

    found = await highest_rate(kept_up, hint=1_000.0)
    assert capacity * 0.95 <= found <= capacity
    assert len(tried) == 6  # one to start from, five to bisect: each a step of seconds


async def test_a_hint_far_above_the_capacity_is_searched_down_from() -> None:
    # a closed loop can flatter a service tenfold: the lower end halves until it is kept up
    async def kept_up(rate: float) -> bool:
        return rate <= 37.0

    found = await highest_rate(kept_up, hint=1_000.0)
    assert 37.0 * 0.95 <= found <= 37.0
