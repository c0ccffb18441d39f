"""The latest load level of each cell, from `tg.<tenant>.oss.congestion`, for dynamic pricing.

Levels live in memory only: a restarted engine prices at 100 % until the network reports
again (the OSS side repeats its reports), and every rated record stores the level it used.
"""

from __future__ import annotations

import json

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tollgate_core.resources.offer import CongestionLevel

log = structlog.get_logger(__name__)
CELLS_MAX = 1_000_000  # bound memory: a flood of bogus cell ids cannot exhaust the engine


class CongestionMap:
    def __init__(self) -> None:
        self._levels: dict[str, CongestionLevel] = {}

    def level(self, cell: str | None) -> CongestionLevel | None:
        return self._levels.get(cell) if cell else None

    def report(self, payload: bytes) -> bool:
        """Apply one report `{"data": {"cell": …, "level": …}}`; False when malformed."""
        try:
            body = json.loads(payload)
            data = body.get("data", body)
            cell, level = str(data["cell"]), CongestionLevel(data["level"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        if cell not in self._levels and len(self._levels) >= CELLS_MAX:
            return False
        self._levels[cell] = level
        return True

    async def follow(self, nc: Client, tenant: str) -> Subscription:
        async def on_report(msg: Msg) -> None:
            if not self.report(msg.data):
                log.warning("malformed congestion report ignored", tenant=tenant,
                            subject=msg.subject)

        return await nc.subscribe(f"tg.{tenant}.oss.congestion", cb=on_report)
