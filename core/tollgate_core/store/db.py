"""Connection pool and tenant-scoped transactions.

Every transaction that touches tenant data sets `tollgate.tenant` first (transaction-local), so
row-level security confines it to that tenant whatever the query says.
"""

from __future__ import annotations

import json
import re
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


_TENANT_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LEVELS: dict[Isolation, str] = {"read_committed": "READ COMMITTED",
                                 "repeatable_read": "REPEATABLE READ",
                                 "serializable": "SERIALIZABLE"}


@asynccontextmanager
async def tenant_tx(pool: Pool, tenant: str, *, isolation: Isolation = "read_committed",
                    readonly: bool = False) -> AsyncIterator[Connection]:
    """One transaction bound to `tenant` by row-level security.

    BEGIN and the tenant setting travel in one round trip (this is on every charging
    request's path); the tenant id is a checked DNS label, so quoting it inline is safe.
    """
    if not _TENANT_ID.match(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    mode = " READ ONLY" if readonly else ""
    async with pool.acquire() as conn:
        await conn.execute(f"BEGIN ISOLATION LEVEL {_LEVELS[isolation]}{mode};"
                           f" SELECT set_config('tollgate.tenant', '{tenant}', true)")
        try:
            yield cast("Connection", conn)
        except BaseException:
            if not conn.is_closed():
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")


def as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
