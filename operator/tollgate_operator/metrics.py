"""Prometheus metrics of the operator, in a registry of its own (no process-global state)."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from tollgate_operator.outcome import Outcome


class OperatorMetrics:
    """Reconciles by kind and result, and how long they take."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._reconciles = Counter(
            "tollgate_operator_reconciles", "Reconciles by resource kind and result "
            "(ok, retry: a temporary failure, error: an unexpected exception).",
            ["kind", "result"], registry=self.registry)
        self._seconds = Histogram(
            "tollgate_operator_reconcile_seconds", "Duration of one reconcile.", ["kind"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self._servers: list[WSGIServer] = []

    async def track(self, kind: str, work: Awaitable[Outcome]) -> Outcome:
        started = time.perf_counter()
        try:
            outcome = await work
        except Exception:
            self._reconciles.labels(kind, "error").inc()
            raise
        finally:
            self._seconds.labels(kind).observe(time.perf_counter() - started)
        result = "retry" if outcome.retry_after_s is not None else "ok"
        self._reconciles.labels(kind, result).inc()
        return outcome

    def serve(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104  (a pod listens)
        """Serve `/metrics` on `port` from a daemon thread until :meth:`close`."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._servers.append(server)

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()
