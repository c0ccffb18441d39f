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


class _ResetWithCommit(asyncpg.Connection):
    """A pooled connection whose session reset (what asyncpg runs on release: advisory locks,
    cursors, LISTEN, session settings) can travel with a transaction's COMMIT."""

    __slots__ = ("_session_reset",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session_reset = False

    async def commit_and_reset(self) -> None:
        """COMMIT and the session reset in one round trip; the release then sends nothing.
        Must be the connection's last statement before it goes back to the pool."""
        await self.execute("COMMIT;\n" + self.get_reset_query())
        self._session_reset = True


async def _reset_unless_done(conn: Connection) -> None:
    """The pool's reset, after asyncpg rolled back any transaction still open: the session
    reset, unless the last COMMIT carried it."""
    if isinstance(conn, _ResetWithCommit) and conn._session_reset:
        conn._session_reset = False
        return
    await conn.execute(conn.get_reset_query())


async def create_pool(dsn: str, min_size: int = 1, max_size: int = 10, *,
                      reset_with_commit: bool = False) -> Pool:
    """`reset_with_commit`: `tenant_tx` sends the session reset with its COMMIT instead of
    in a round trip of its own when the connection is released (the API's many short
    read transactions)."""
    extra: dict[str, Any] = ({"connection_class": _ResetWithCommit,
                              "reset": _reset_unless_done} if reset_with_commit else {})
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     init=_init_connection, **extra)
    assert pool is not None
    return pool


_TENANT_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LEVELS: dict[Isolation, str] = {"read_committed": "READ COMMITTED",
                                 "repeatable_read": "REPEATABLE READ",
                                 "serializable": "SERIALIZABLE"}


def begin_statement(tenant: str, *, isolation: Isolation = "read_committed",
                    readonly: bool = False, generic_plans: bool = False) -> str:
    """What opens a transaction bound to `tenant` by row-level security: BEGIN and the
    tenant setting in one round trip (this is on every charging request's path); the tenant
    id is a checked DNS label, so quoting it inline is safe. `generic_plans`: the
    transaction's prepared statements run their generic plan instead of being planned again
    for each execution's values (for lookups by key, whose plan does not depend on the
    values: PostgreSQL otherwise may keep planning statements that take arrays).

    ValueError if `tenant` is not a tenant id."""
    if not _TENANT_ID.match(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    mode = " READ ONLY" if readonly else ""
    plans = "; SET LOCAL plan_cache_mode = force_generic_plan" if generic_plans else ""
    return (f"BEGIN ISOLATION LEVEL {_LEVELS[isolation]}{mode};"
            f" SELECT set_config('tollgate.tenant', '{tenant}', true){plans}")


@asynccontextmanager
async def tenant_tx(pool: Pool, tenant: str, *, isolation: Isolation = "read_committed",
                    readonly: bool = False, generic_plans: bool = False
                    ) -> AsyncIterator[Connection]:
    """One transaction bound to `tenant` by row-level security (see `begin_statement`)."""
    begin = begin_statement(tenant, isolation=isolation, readonly=readonly,
                            generic_plans=generic_plans)
    async with pool.acquire() as conn:
        await conn.execute(begin)
        try:
            yield cast("Connection", conn)
        except BaseException:
            if not conn.is_closed():
                await conn.execute("ROLLBACK")
            raise
        commit_and_reset = getattr(conn, "commit_and_reset", None)  # reset_with_commit
        if commit_and_reset is not None:
            await commit_and_reset()
        else:
            await conn.execute("COMMIT")


def as_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
