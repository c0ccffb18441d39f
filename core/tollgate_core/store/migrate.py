"""Apply plain SQL migrations in order, each once, recorded in `schema_migrations`."""

from __future__ import annotations

from importlib import resources

import asyncpg

_LOCK_KEY = 0x7011_6A7E  # advisory lock: concurrent migrators (replicas, a Job) take turns


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("tollgate_core.store") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


async def migrate(dsn: str, app_password: str | None = None) -> list[str]:
    """Apply pending migrations as the owner; return the versions applied now.

    `app_password`, when given, lets the application role log in (local mode and tests; in
    Kubernetes the password comes from the tenant's Secret).
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for version, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            applied.append(version)
        if app_password is not None:
            # ALTER ROLE takes no bind parameters; quote_literal is done by the server.
            literal = await conn.fetchval("SELECT quote_literal($1)", app_password)
            await conn.execute(f"ALTER ROLE tollgate_app LOGIN PASSWORD {literal}")
        return applied
    finally:
        await conn.close()
