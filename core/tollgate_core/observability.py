"""Structured logs (JSON when not a TTY) and the Prometheus metrics of the engines."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import AsyncIterator
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import Counter, Histogram, start_http_server

EVENTS_RATED = Counter("tollgate_usage_events_rated_total", "Usage events rated", ["tenant"])
EVENTS_DEAD_LETTERED = Counter("tollgate_usage_events_dead_lettered_total",
                               "Usage events sent to the dead-letter subject",
                               ["tenant", "reason"])
EVENTS_DUPLICATE = Counter("tollgate_usage_events_duplicate_total",
                           "Redelivered usage events already handled (inbox hit)", ["tenant"])
BATCH_SECONDS = Histogram("tollgate_charging_batch_seconds", "Time to rate and commit one batch",
                          ["tenant"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
ONLINE_REQUESTS = Counter("tollgate_online_requests_total",
                          "Online charging requests answered, by operation and result code",
                          ["tenant", "operation", "result"])
ONLINE_SECONDS = Histogram("tollgate_online_request_seconds",
                           "Time from an online charging request's arrival to its answer",
                           ["tenant", "operation"],
                           buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
DOCUMENTS_ISSUED = Counter("tollgate_billing_documents_issued_total",
                           "Invoices and statements issued by bill runs", ["tenant"])
BILL_RUN_SECONDS = Histogram("tollgate_bill_run_seconds", "Duration of a whole bill run",
                             ["tenant"], buckets=(1, 5, 15, 60, 300, 900, 3600))
PAYMENTS_APPLIED = Counter("tollgate_billing_payments_total", "Payments recorded", ["tenant"])
DUNNING_ACTIONS = Counter("tollgate_billing_dunning_total",
                          "Dunning steps taken (overdue, reminder, suspended, resumed)",
                          ["tenant", "action"])

# One `/metrics` server per address and process, shared by the engines that ask for it.
_endpoints: dict[tuple[str, int], tuple[WSGIServer, int]] = {}
_endpoints_lock = threading.Lock()


@contextlib.asynccontextmanager
async def metrics_endpoint(host: str, port: int | None) -> AsyncIterator[None]:
    """Serve the process's Prometheus registry on `http://host:port/metrics` while open.

    The registry is process-wide (every series carries its tenant), so engines of one process
    asking for the same address share one server, stopped when the last one leaves. A port
    that is taken raises OSError: a pod's metrics port is its own, so that is a real error.
    `port` None serves nothing.
    """
    if port is None:
        yield
        return
    key = (host, port)
    with _endpoints_lock:
        if key in _endpoints:
            server, users = _endpoints[key]
        else:
            server, _thread = start_http_server(port, addr=host)
            users = 0
        _endpoints[key] = (server, users + 1)
    try:
        yield
    finally:
        with _endpoints_lock:
            server, users = _endpoints.pop(key)
            last = users == 1
            if not last:
                _endpoints[key] = (server, users - 1)
        if last:
            await asyncio.to_thread(server.shutdown)
            server.server_close()


def _stderr_logger(*_: object) -> structlog.PrintLogger:
    # sys.stderr as it is now, not when logging was configured: whoever replaced it (a test
    # runner, a CLI runner) may have closed the old one since.
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(level: str = "INFO", json_logs: bool | None = None) -> None:
    """JSON lines when stdout is not a terminal (containers, CI), readable text otherwise."""
    as_json = (not sys.stderr.isatty()) if json_logs is None else json_logs
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
