"""Invariant 1 at the batch level: a redelivered batch changes nothing, a batch with the same
event twice rates it once, and an event is never both rated and dead-lettered — also when two
transactions handle it at the same time (a rated event's claim is its rated record, a
dead-lettered one's an inbox row, ADR 0004)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pytest

from tests.conftest import Servers
from tests.factories import install_example_catalog, usage_payload
from tests.integration.test_walking_skeleton import MSISDN, register_and_order
from tests.running import Api
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.settings import ChargingSettings
from tollgate_core.store import rating_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_core.store.rating_repo import AlreadyHandled, RatedValues

MIB = 1024**2


@dataclass
class Delivered:
    """A message as JetStream hands it over (subject, data, headers)."""

    subject: str
    data: bytes
    header: dict[str, str] | None = None


async def ledger_state(servers: Servers, tenant: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM rated_usage WHERE tenant_id = $1) AS rated,"
            " (SELECT count(*) FROM transfers WHERE tenant_id = $1) AS transfers,"
            " (SELECT coalesce(sum(amount_micros), 0) FROM transfers WHERE tenant_id = $1)"
            " AS moved", tenant)
    finally:
        await conn.close()
    assert row is not None
    return row["rated"], row["transfers"], row["moved"]


async def test_redelivered_batch_is_rated_once(api: Api, pool: Pool, servers: Servers,
                                               tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    plan = await register_and_order(api, api.token(tenant_name))
    assert plan
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)
    # 6 × 1 GiB: 5 GiB allowance then 1 GiB paid at 0.01 EUR/MiB = 10.24 EUR.
    batch = [Delivered(f"tg.{tenant_name}.usage.data",
                       usage_payload(tenant_name, MSISDN, 1024 * MIB)[1]) for _ in range(6)]
    first = await engine.process(batch)
    assert (first.rated, first.duplicates) == (6, 0)
    before = await ledger_state(servers, tenant_name)
    assert before == (6, 1, 10_240_000)

    # The crash-after-commit case: the same messages come again.
    again = await engine.process(batch)
    assert (again.rated, again.duplicates) == (0, 6)
    assert await ledger_state(servers, tenant_name) == before


async def test_the_same_event_twice_in_one_batch_counts_once(api: Api, pool: Pool,
                                                             servers: Servers,
                                                             tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    await register_and_order(api, api.token(tenant_name))
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)
    _, payload = usage_payload(tenant_name, MSISDN, MIB)
    message = Delivered(f"tg.{tenant_name}.usage.data", payload)
    outcome = await engine.process([message, message])
    assert (outcome.rated, outcome.duplicates) == (1, 1)


def engine_for(servers: Servers, pool: Pool, tenant: str) -> ChargingEngine:
    return ChargingEngine(ChargingSettings(tenant=tenant, database_url=servers.app_dsn,
                                           nats_url=servers.nats_url), pool)


def data_event(tenant: str, quantity: int = MIB) -> tuple[str, Delivered]:
    event_id, payload = usage_payload(tenant, MSISDN, quantity)
    return event_id, Delivered(f"tg.{tenant}.usage.data", payload)


async def test_redelivered_events_among_new_ones_are_skipped_and_the_new_ones_rated(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    await register_and_order(api, api.token(tenant_name))
    engine = engine_for(servers, pool, tenant_name)
    (_, a), (_, b), (_, c), (_, d) = (data_event(tenant_name, 1024 * MIB) for _ in range(4))
    assert (await engine.process([a, b])).rated == 2
    # b was rated: the batch is rolled back at its claim and rated again without it.
    again = await engine.process([b, c, d, c])
    assert (again.rated, again.duplicates) == (2, 2)
    # 4 GiB of the 5 GiB allowance: nothing charged, and each GiB drawn once.
    assert await ledger_state(servers, tenant_name) == (4, 0, 0)
    drawn = await owner_value(servers, "SELECT sum(used) FROM allowance_usage"
                              " WHERE tenant_id = $1", tenant_name)
    assert drawn == 4 * 1024 * MIB


async def test_a_dead_lettered_event_that_comes_again_once_it_could_be_rated_is_not(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Redelivery is not re-drive: the event stays dead-lettered, never rated as well."""
    await install_example_catalog(pool, tenant_name)
    engine = engine_for(servers, pool, tenant_name)
    event_id, message = data_event(tenant_name)
    first = await engine.process([message])
    assert (first.rated, first.dead_lettered) == (0, 1)
    await register_and_order(api, api.token(tenant_name))  # the line now exists
    _, other = data_event(tenant_name)
    again = await engine.process([message, other])
    assert (again.rated, again.dead_lettered, again.duplicates) == (1, 0, 1)
    assert await owner_value(servers, "SELECT count(*) FROM rated_usage WHERE tenant_id = $1"
                             " AND event_id = $2", tenant_name, uuid.UUID(event_id)) == 0
    assert await owner_value(servers, "SELECT reason FROM dead_letters WHERE tenant_id = $1"
                             " AND event_id = $2", tenant_name, event_id) == "UNKNOWN_SUBSCRIBER"


async def test_a_rated_event_that_comes_again_once_it_would_be_refused_is_not_dead_lettered(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    await register_and_order(api, api.token(tenant_name))
    engine = engine_for(servers, pool, tenant_name)
    _, message = data_event(tenant_name)
    assert (await engine.process([message])).rated == 1
    conn = await asyncpg.connect(servers.owner_dsn)  # the line is cancelled meanwhile
    try:
        await conn.execute("SELECT set_config('tollgate.tenant', $1, false)", tenant_name)
        await conn.execute("UPDATE subscriptions SET status = 'cancelled'")
    finally:
        await conn.close()
    again = await engine.process([message])
    assert (again.rated, again.dead_lettered, again.duplicates) == (0, 0, 1)
    assert await owner_value(servers, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1",
                             tenant_name) == 0


async def test_one_uuid_spelled_two_ways_is_one_event(api: Api, pool: Pool, servers: Servers,
                                                      tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    await register_and_order(api, api.token(tenant_name))
    engine = engine_for(servers, pool, tenant_name)
    event_id = str(uuid.uuid4())
    spellings = [event_id.upper(), event_id, uuid.UUID(event_id).hex]
    messages = [Delivered(f"tg.{tenant_name}.usage.data",
                          usage_payload(tenant_name, MSISDN, MIB, event_id=spelling)[1])
                for spelling in spellings]
    outcome = await engine.process(messages[:2])
    assert (outcome.rated, outcome.duplicates) == (1, 1)
    assert (await engine.process(messages[2:])).duplicates == 1
    assert await ledger_state(servers, tenant_name) == (1, 0, 0)


async def owner_value(servers: Servers, query: str, *args: object) -> object:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def rated_row(servers: Servers, tenant: str, event_id: str,
                    revision_after: int = 0) -> RatedValues:
    """A rated record of the tenant's latest catalog revision (plus `revision_after`)."""
    revision = await owner_value(servers, "SELECT max(revision) FROM catalog_revisions"
                                 " WHERE tenant_id = $1", tenant)
    assert isinstance(revision, int)
    return (event_id, str(uuid.uuid4()), str(uuid.uuid4()), "data", MIB, MIB, 0, 0, "EUR",
            None, revision + revision_after, datetime.now(UTC), {})


async def blocked(task: asyncio.Task[object]) -> bool:
    await asyncio.sleep(0.3)
    return not task.done()


@pytest.mark.parametrize("first", ["dead-letters", "rates"])
async def test_rating_and_dead_lettering_one_event_at_once_leaves_one_outcome(
        pool: Pool, servers: Servers, tenant_name: str, first: str) -> None:
    """Two transactions handle the same event, one rating it, the other refusing it (say the
    line was cancelled between their reads): the claims live under different keys, so the
    claim lock makes the second wait for the first to commit, then see its claim."""
    await install_example_catalog(pool, tenant_name)
    consumer = f"charging-{tenant_name}"
    event_id = str(uuid.uuid4())
    row = await rated_row(servers, tenant_name, event_id)
    committed = asyncio.Event()
    first_claimed = asyncio.Event()

    async def dead_letter() -> object:
        async with tenant_tx(pool, tenant_name) as conn:
            await rating_repo.lock_claims(conn, tenant_name, consumer, exclusive=True)
            claimed = await rating_repo.claim_rejects(conn, tenant_name, consumer, [event_id])
            first_claimed.set()
            if first == "dead-letters":
                await committed.wait()
        return claimed

    async def rate() -> object:
        async with tenant_tx(pool, tenant_name) as conn:
            await rating_repo.lock_claims(conn, tenant_name, consumer, exclusive=False)
            await rating_repo.insert_rated_claims(conn, tenant_name, consumer, [row])
            first_claimed.set()
            if first == "rates":
                await committed.wait()
        return True

    winner, loser = (dead_letter, rate) if first == "dead-letters" else (rate, dead_letter)
    won = asyncio.create_task(winner())
    await first_claimed.wait()
    lost = asyncio.create_task(loser())
    assert await blocked(lost), "the second claim waits for the first transaction"
    committed.set()
    assert await won in ({event_id}, True)
    if first == "dead-letters":
        with pytest.raises(AlreadyHandled):
            await lost
    else:
        assert await lost == set()
    rated = await owner_value(servers, "SELECT count(*) FROM rated_usage WHERE tenant_id = $1",
                              tenant_name)
    inbox = await owner_value(servers, "SELECT count(*) FROM inbox WHERE tenant_id = $1",
                              tenant_name)
    assert (rated, inbox) == ((0, 1) if first == "dead-letters" else (1, 0))


async def test_rated_records_keep_the_catalog_revision_key(pool: Pool, servers: Servers,
                                                           tenant_name: str) -> None:
    """Invariant 5 stays a foreign key: a rated record naming no revision is refused."""
    await install_example_catalog(pool, tenant_name)
    missing = await rated_row(servers, tenant_name, str(uuid.uuid4()), revision_after=1)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with tenant_tx(pool, tenant_name) as conn:
            await rating_repo.insert_rated_claims(conn, tenant_name, "c", [missing])
