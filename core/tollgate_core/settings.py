"""Settings read once at the entrypoint and passed down; nothing reads the environment later."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChargingSettings:
    tenant: str
    database_url: str
    nats_url: str
    batch_max: int = 500
    """Usage events per batch and per PostgreSQL transaction: larger batches amortise the
    commit, smaller ones cut latency. 500 keeps a batch well under 100 ms."""
    fetch_timeout_s: float = 0.5
    """How long a pull waits for the first message of a batch."""
    ack_wait_s: float = 30.0
    """Redelivery after this long without ack; must exceed the slowest batch by far."""
    consumer: str = "charging"
    """Durable consumer base name; the tenant is appended (`charging-<tenant>`)."""


@dataclass(frozen=True, slots=True)
class ApiSettings:
    database_url: str
    nats_url: str
    jwt_secret: str
    """HS256 key for local mode; Kubernetes mode uses the tenant's issuer keys."""
    jwt_issuer: str = "tollgate-dev"
    host: str = "127.0.0.1"
    port: int = 8080
    graphiql: bool = True
