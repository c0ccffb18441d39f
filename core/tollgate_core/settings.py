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
    batches_in_flight: int = 2
    """Batches rated at once, each in its own transaction, so that PostgreSQL commits one
    while Python pulls, parses and rates the next; 1 rates one batch after the other."""
    fetch_timeout_s: float = 0.5
    """How long a pull waits for the first message of a batch."""
    ack_wait_s: float = 30.0
    """Redelivery after this long without ack; must exceed the slowest batch by far."""
    consumer: str = "charging"
    """Durable consumer base name; the tenant is appended (`charging-<tenant>`)."""
    metrics_port: int | None = 9090
    """Port of the Prometheus `/metrics` endpoint: the `metrics` port (9090) of the Deployment
    the operator renders. None: not served (an embedding process serves its own). Engines of
    one process on the same address share one endpoint."""
    metrics_host: str = "127.0.0.1"
    """Address of the `/metrics` endpoint; `tollgate charging` binds all (0.0.0.0) in a pod."""


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
    rate_limit_per_s: float = 50.0
    """Sustained GraphQL HTTP requests per second per caller (tenant + token subject; an
    unauthenticated caller by client address), per API process. 0 turns the limit off."""
    rate_limit_burst: int = 100
    """Requests a caller may make at once before the sustained rate applies. A websocket
    connection (its `connection_init`) takes a token of the same bucket as a request."""
    ws_connections_per_credential: int = 16
    """Websocket connections one credential may hold open at once, per API process;
    0: no cap."""
    ws_operations_per_connection: int = 100
    """Operations (subscriptions, and queries in flight) at once on one websocket
    connection."""


@dataclass(frozen=True, slots=True)
class BillingSettings:
    tenant: str
    database_url: str
    nats_url: str
    batch: int = 500
    """Accounts per bill-run transaction."""
    interval_s: float = 60.0
    """How often the engine looks for a bill period that ended and runs dunning."""
    metrics_port: int | None = 9090
    metrics_host: str = "127.0.0.1"
