"""Connection pool and tenant-scoped transactions.

Every transaction that touches tenant data sets `tollgate.tenant` first (transaction-local), so
row-level security confines it to that tenant whatever the query says.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

import asyncpg

if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:  # asyncpg's classes are generic only in its stubs
    Connection = asyncpg.Connection
    Pool = asyncpg.Pool

Isolation = Literal["read_committed", "repeatable_read", "serializable"]


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> Pool:
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     init=_init_connection)
    assert pool is not None
    return pool


@asynccontextmanager
async def tenant_tx(pool: Pool, tenant: str, *, isolation: Isolation = "read_committed",
                    readonly: bool = False) -> AsyncIterator[Connection]:
    """One transaction bound to `tenant` by row-level security."""
    async with pool.acquire() as conn, conn.transaction(isolation=isolation, readonly=readonly):
        await conn.execute("SELECT set_config('tollgate.tenant', $1, true)", tenant)
        yield cast("Connection", conn)


def as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
