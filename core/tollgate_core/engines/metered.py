"""Online charging with Prometheus metrics: requests by operation and result, and latency.

A subclass rather than lines in :mod:`online`, so the decision code stays free of metrics;
`run_charging` builds this one.
"""

from __future__ import annotations

import time
from typing import Any

from tollgate_core.domain.online import ResultCode
from tollgate_core.engines.online import OnlineCharging
from tollgate_core.observability import ONLINE_REQUESTS, ONLINE_SECONDS


class MeteredOnlineCharging(OnlineCharging):
    """Counts every answer of :meth:`OnlineCharging.handle` by its result code.

    An exception counts as UNABLE_TO_COMPLY: the answer `serve` sends in that case.
    """

    async def handle(self, operation: str, payload: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            reply = await super().handle(operation, payload)
        except Exception:
            self._count(operation, ResultCode.UNABLE_TO_COMPLY.value, started)
            raise
        self._count(operation, str(reply.get("result")), started)
        return reply

    def _count(self, operation: str, result: str, started: float) -> None:
        ONLINE_SECONDS.labels(self.tenant, operation).observe(time.perf_counter() - started)
        ONLINE_REQUESTS.labels(self.tenant, operation, result).inc()
