"""Connect to NATS and declare the JetStream streams every tenant shares.

JetStream is the transport, not the system of record: PostgreSQL is (see DESIGN.md).
"""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

DEDUPE_WINDOW_S = 120.0

STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(name="USAGE", subjects=["tg.*.usage.>"], storage=StorageType.FILE,
                 retention=RetentionPolicy.LIMITS, duplicate_window=DEDUPE_WINDOW_S,
                 max_age=7 * 86_400.0, discard=DiscardPolicy.OLD),
    StreamConfig(name="EVENTS", subjects=["tg.*.evt.>"], storage=StorageType.FILE,
                 duplicate_window=DEDUPE_WINDOW_S, max_age=7 * 86_400.0),
    StreamConfig(name="DLQ", subjects=["tg.*.dlq.>"], storage=StorageType.FILE,
                 duplicate_window=DEDUPE_WINDOW_S, max_age=30 * 86_400.0),
    StreamConfig(name="OSS", subjects=["tg.*.oss.>"], storage=StorageType.FILE,
                 duplicate_window=DEDUPE_WINDOW_S, max_age=7 * 86_400.0),
)


async def connect(url: str, name: str) -> Client:
    """Connect with reconnects forever: a NATS restart must not kill an engine."""
    return await nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5)


async def ensure_streams(js: JetStreamContext) -> None:
    """Create or update the shared streams (idempotent)."""
    for config in STREAMS:
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
