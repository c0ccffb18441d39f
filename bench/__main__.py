"""`make bench`: run every benchmark in turn; each records its section in bench/RESULTS.md."""

from __future__ import annotations

import asyncio

from bench import ledger_write, offline_rating, online_charging

if __name__ == "__main__":
    for benchmark in (offline_rating, ledger_write, online_charging):
        asyncio.run(benchmark.main())
