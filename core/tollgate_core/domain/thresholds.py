"""Usage and balance thresholds: which ones a change crossed (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """`percent` of allowance `allowance` used, or the balance falling below a level."""

    allowance: str | None
    percent: int | None
    balance_below_micros: int | None
    upsell_offer: str | None

    @property
    def key(self) -> str:
        if self.allowance is not None:
            return f"allowance:{self.allowance}:{self.percent}"
        return f"balance-below:{self.balance_below_micros}"


def allowance_level(quantity: int, percent: int) -> int:
    """Units used at which `percent` is reached (rounded up: 80 % of 5 units is 4 units)."""
    return -(-quantity * percent // 100)


def crossed_allowance(rules: tuple[ThresholdRule, ...], allowance: str, quantity: int,
                      used_before: int, used_after: int) -> list[ThresholdRule]:
    return [r for r in rules
            if r.allowance == allowance and r.percent is not None
            and used_before < allowance_level(quantity, r.percent) <= used_after]


def crossed_balance(rules: tuple[ThresholdRule, ...], before_micros: int,
                    after_micros: int) -> list[ThresholdRule]:
    return [r for r in rules
            if r.balance_below_micros is not None
            and before_micros >= r.balance_below_micros > after_micros]
