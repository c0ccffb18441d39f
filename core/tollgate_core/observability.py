"""Structured logs (JSON when not a TTY) and the Prometheus metrics of the engines."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import Counter, Histogram

EVENTS_RATED = Counter("tollgate_usage_events_rated_total", "Usage events rated", ["tenant"])
EVENTS_DEAD_LETTERED = Counter("tollgate_usage_events_dead_lettered_total",
                               "Usage events sent to the dead-letter subject",
                               ["tenant", "reason"])
EVENTS_DUPLICATE = Counter("tollgate_usage_events_duplicate_total",
                           "Redelivered usage events already handled (inbox hit)", ["tenant"])
BATCH_SECONDS = Histogram("tollgate_charging_batch_seconds", "Time to rate and commit one batch",
                          ["tenant"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
