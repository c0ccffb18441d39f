"""`make bench`: run every benchmark in turn."""

from __future__ import annotations

import asyncio

from bench import offline_rating

if __name__ == "__main__":
    asyncio.run(offline_rating.main())
