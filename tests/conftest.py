"""Session fixtures: real PostgreSQL and NATS JetStream on free loopback ports."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from tollgate_core.bus.nats import connect, ensure_streams
from tollgate_core.local.servers import NatsServer, PostgresServer
from tollgate_core.store.db import Pool, create_pool
from tollgate_core.store.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@dataclass(frozen=True)
class Servers:
    owner_dsn: str
    app_dsn: str
    nats_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")
    base.chmod(0o755)  # the PostgreSQL server may run as `nobody`
    postgres = PostgresServer(base / "pgdata", durable=False)
    nats = NatsServer(base / "nats")
    postgres.start()
    try:
        nats.start()
        password = secrets.token_urlsafe(16)
        asyncio.run(migrate(postgres.dsn, password))
        yield Servers(postgres.dsn, postgres.dsn_for("tollgate_app", password), nats.url)
    finally:
        nats.stop()
        postgres.destroy()


@pytest_asyncio.fixture(scope="session")
async def pool(servers: Servers) -> AsyncIterator[Pool]:
    pool = await create_pool(servers.app_dsn, max_size=20)
    yield pool
    await pool.close()


@pytest_asyncio.fixture(scope="session")
async def nats_client(servers: Servers) -> AsyncIterator[Client]:
    nc = await connect(servers.nats_url, name="tests")
    await ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


@pytest.fixture
def js(nats_client: Client) -> JetStreamContext:
    return nats_client.jetstream()


@pytest.fixture
def tenant_name() -> str:
    """A fresh tenant per test: tests share servers but never data."""
    return f"t{uuid.uuid4().hex[:10]}"


# Running servers shared by integration, api and e2e tests (defined in tests/running.py).
from tests.running import api, charging  # noqa: E402, F401
