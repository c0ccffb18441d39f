"""`make bench`: run every benchmark in turn; each records its section in bench/RESULTS.md.
`python -m bench api online_charging` runs only the named ones."""

from __future__ import annotations

import asyncio
import sys

from bench import (
    api,
    audit_chain,
    bill_run,
    ledger_write,
    offline_rating,
    online_charging,
    operator,
)

BENCHMARKS = {"offline_rating": offline_rating, "ledger_write": ledger_write,
              "online_charging": online_charging, "api": api, "operator": operator,
              "bill_run": bill_run, "audit_chain": audit_chain}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in chosen:
        asyncio.run(BENCHMARKS[name].main())
