"""Fixtures of the API tests: the Node.js clients (graphql-http audit, graphql-ws)."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
