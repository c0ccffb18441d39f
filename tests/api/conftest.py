"""Fixtures of the API tests: the Node.js clients (graphql-http audit, graphql-ws) and a
recorder of the statements sent to PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from tests.harness.node import NodeHarnessError, node_modules


@pytest_asyncio.fixture(scope="session")
async def npm_modules() -> Path:
    """tests/harness/npm installed (once, cached); a clear failure when it cannot be."""
    try:
        return await asyncio.to_thread(node_modules)
    except NodeHarnessError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement sent to PostgreSQL by any asyncpg connection of this process (the
    in-process API server's included), recorded on the real connection class."""
    sent: list[str] = []
    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        original = getattr(asyncpg.connection.Connection, name)

        def counted(original: Any) -> Any:
            async def method(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
                sent.append(query)
                return await original(self, query, *args, **kwargs)
            return method

        monkeypatch.setattr(asyncpg.connection.Connection, name, counted(original))
    return sent
