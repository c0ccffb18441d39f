"""Running pieces for tests: the GraphQL API over real HTTP, charging engines, polling."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest_asyncio
import uvicorn

from tests.conftest import Servers
from tollgate_api.app import create_app
from tollgate_api.auth import TokenVerifier
from tollgate_core.engines.runner import run_charging
from tollgate_core.local.servers import free_port
from tollgate_core.settings import ApiSettings, ChargingSettings

ISSUER = "tollgate-test"


@dataclass
class Api:
    url: str
    verifier: TokenVerifier

    def token(self, tenant: str, subject: str = "agent-1", roles: tuple[str, ...] = ("agent",)
              ) -> str:
        return self.verifier.mint(tenant, subject, list(roles))

    async def graphql(self, token: str, query: str,
                      variables: dict[str, Any] | None = None) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(self.url, json={"query": query, "variables": variables},
                                         headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@contextlib.asynccontextmanager
async def serve_api(servers: Servers, clock: Callable[[], datetime] | None = None,
                    **overrides: Any) -> AsyncIterator[Api]:
    """A GraphQL API server on a free port with its own secret; `overrides` are ApiSettings
    fields (e.g. a tight rate limit); `clock` the time network API calls are metered at."""
    secret = secrets.token_urlsafe(32)
    port = free_port()
    settings = ApiSettings(database_url=servers.app_dsn, nats_url=servers.nats_url,
                           jwt_secret=secret, jwt_issuer=ISSUER, port=port, **overrides)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, clock), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "API server failed to start"
        await asyncio.sleep(0.02)
    try:
        yield Api(f"http://127.0.0.1:{port}/graphql", TokenVerifier(secret, ISSUER))
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(scope="session")
async def api(servers: Servers) -> AsyncIterator[Api]:
    async with serve_api(servers) as running:
        yield running


StartEngine = Callable[[str], Awaitable[None]]


@pytest_asyncio.fixture
async def charging(servers: Servers) -> AsyncIterator[StartEngine]:
    """Start the real charging engine (JetStream consumer) for a tenant, stopped at teardown."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(tenant: str) -> None:
        settings = ChargingSettings(tenant=tenant, database_url=servers.app_dsn,
                                    nats_url=servers.nats_url, fetch_timeout_s=0.2,
                                    metrics_port=None)  # concurrent runs would share 9090
        ready = asyncio.Event()
        task = asyncio.create_task(run_charging(settings, stop, ready))
        tasks.append(task)
        await asyncio.wait([task, asyncio.create_task(ready.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raise the reason it could not start

    yield start
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results


async def eventually(check: Callable[[], Awaitable[bool]], deadline_s: float = 20.0) -> None:
    """Poll `check` until true or fail after the deadline (never a bare sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not await check():
        if loop.time() > end:
            raise AssertionError(f"condition not met within {deadline_s}s")
        await asyncio.sleep(0.05)
