"""PostgreSQL persistence (asyncpg): migrations, tenant-scoped transactions, repositories."""
