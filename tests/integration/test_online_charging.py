"""Online (prepaid) charging over NATS request/reply: grants never exceed the balance,
commits post what was used, releases and expiries return the holds."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
from nats.aio.client import Client

from tests.conftest import Servers
from tests.factories import install_example_catalog, offer_document
from tests.integration.test_exactly_once import Delivered
from tests.running import Api, StartEngine
from tollgate_core import catalog_service, customer_service
from tollgate_core.domain.usage import UsageEvent, usage_envelope
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.engines.online import OnlineCharging, OnlinePolicy
from tollgate_core.resources import Offer, parse_resource
from tollgate_core.resources.tenant import FailureHandling
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool

MIB = 1024**2
LINE = "491709999999"


async def prepaid_line(pool: Pool, tenant: str, top_up: str) -> uuid.UUID:
    """A prepaid customer on a data-only offer (0.01 EUR per MiB, per started KiB, no
    allowance), topped up with `top_up` EUR."""
    await install_example_catalog(pool, tenant)
    offer = parse_resource(offer_document(tenant, "prepaid-data", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes", "increment": 1024,
                  "tiers": [{"from": 0, "unitPrice": "0.01", "per": MIB}]}}]))
    assert isinstance(offer, Offer)
    assert (await catalog_service.apply_offer(pool, tenant, "prepaid-data", offer.spec)).valid
    customer = await customer_service.register_customer(
        pool, tenant, name="P", email="p@example.de", payment_type="prepaid",
        customer_type="consumer", idempotency_key="reg")
    await customer_service.place_order(pool, tenant, customer_id=customer,
                                       offer="prepaid-data", subscriber=LINE,
                                       idempotency_key="order")
    await customer_service.top_up(pool, tenant, customer_id=customer, amount=top_up,
                                  idempotency_key="topup")
    return customer


async def request(nc: Client, tenant: str, operation: str, **body: Any) -> dict[str, Any]:
    reply = await nc.request(f"tg.{tenant}.charge.{operation}", json.dumps(body).encode(),
                             timeout=30)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def account(servers: Servers, tenant: str, customer: uuid.UUID) -> tuple[int, int]:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT balance_micros, pending_micros FROM ledger_accounts WHERE tenant_id = $1"
            " AND account_id = $2", tenant, f"customer:{customer}")
    finally:
        await conn.close()
    assert row is not None
    return row["balance_micros"], row["pending_micros"]


async def test_reserve_grants_what_the_balance_covers_and_commit_posts_what_was_used(
        pool: Pool, nats_client: Client, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    customer = await prepaid_line(pool, tenant_name, "1.00")
    await charging(tenant_name)
    # 1.00 EUR at 0.01 EUR/MiB covers 100 MiB of the 150 MiB asked for.
    granted = await request(nats_client, tenant_name, "reserve", sessionId="s1",
                            requestNumber=0, subscriber=LINE, service="data", units=150 * MIB)
    assert granted["result"] == "SUCCESS"
    assert granted["grantedUnits"] == 100 * MIB
    assert await account(servers, tenant_name, customer) == (1_000_000, 1_000_000)

    # A retried reserve (same session and request number) gets the same answer, no new hold.
    again = await request(nats_client, tenant_name, "reserve", sessionId="s1",
                          requestNumber=0, subscriber=LINE, service="data", units=150 * MIB)
    assert again["reservationId"] == granted["reservationId"]
    assert await account(servers, tenant_name, customer) == (1_000_000, 1_000_000)

    # 60 MiB used: 0.60 EUR posted, the rest of the hold voided: balance 0.40, nothing pending.
    committed = await request(nats_client, tenant_name, "commit",
                              reservationId=granted["reservationId"], usedUnits=60 * MIB)
    assert (committed["result"], committed["chargedMicros"]) == ("SUCCESS", 600_000)
    assert await account(servers, tenant_name, customer) == (400_000, 0)
    repeat = await request(nats_client, tenant_name, "commit",
                           reservationId=granted["reservationId"], usedUnits=60 * MIB)
    assert repeat == committed
    assert await account(servers, tenant_name, customer) == (400_000, 0)


async def test_concurrent_reservations_never_overspend(
        pool: Pool, nats_client: Client, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    customer = await prepaid_line(pool, tenant_name, "1.00")
    await charging(tenant_name)
    # 1,000 sessions at once each want 1 MiB (0.01 EUR); the account is funded for 100.
    answers = await asyncio.gather(*[
        request(nats_client, tenant_name, "reserve", sessionId=f"s{i}", requestNumber=0,
                subscriber=LINE, service="data", units=MIB) for i in range(1000)])
    granted = [a for a in answers if a["result"] == "SUCCESS"]
    refused = [a for a in answers if a["result"] == "CREDIT_LIMIT_REACHED"]
    assert len(granted) == 100
    others = [a for a in answers if a["result"] not in ("SUCCESS", "CREDIT_LIMIT_REACHED")]
    assert len(refused) == 900, others
    assert all(a["grantedUnits"] == MIB for a in granted)
    assert await account(servers, tenant_name, customer) == (1_000_000, 1_000_000)


async def test_release_and_expiry_return_the_hold(
        pool: Pool, nats_client: Client, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    customer = await prepaid_line(pool, tenant_name, "1.00")
    await charging(tenant_name)
    first = await request(nats_client, tenant_name, "reserve", sessionId="a", requestNumber=0,
                          subscriber=LINE, service="data", units=30 * MIB)
    second = await request(nats_client, tenant_name, "reserve", sessionId="b", requestNumber=0,
                           subscriber=LINE, service="data", units=20 * MIB)
    assert await account(servers, tenant_name, customer) == (1_000_000, 500_000)
    released = await request(nats_client, tenant_name, "release",
                             reservationId=first["reservationId"])
    assert released == {"result": "SUCCESS", "state": "voided"}
    assert await account(servers, tenant_name, customer) == (1_000_000, 200_000)

    # Let the second reservation's validity lapse; the engine's sweeper voids it.
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        await conn.execute("UPDATE reservations SET expires_at = now() - interval '1 second'"
                           " WHERE reservation_id = $1", uuid.UUID(second["reservationId"]))
        for _ in range(200):
            state = await conn.fetchval("SELECT state FROM reservations WHERE reservation_id"
                                        " = $1", uuid.UUID(second["reservationId"]))
            if state == "expired":
                break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert state == "expired"
    assert await account(servers, tenant_name, customer) == (1_000_000, 0)
    late = await request(nats_client, tenant_name, "commit",
                         reservationId=second["reservationId"], usedUnits=MIB)
    assert late == {"result": "RESERVATION_CLOSED", "state": "expired"}


async def test_bad_requests_get_a_result_code_naming_the_field(
        api: Api, pool: Pool, nats_client: Client, charging: StartEngine,
        tenant_name: str) -> None:
    await prepaid_line(pool, tenant_name, "1.00")
    await charging(tenant_name)
    missing = await request(nats_client, tenant_name, "reserve", sessionId="x",
                            subscriber=LINE, service="data", units=1)
    assert missing == {"result": "INVALID_REQUEST", "detail": "requestNumber: required int"}
    unknown = await request(nats_client, tenant_name, "reserve", sessionId="x",
                            requestNumber=0, subscriber="490000000000", service="data", units=1)
    assert unknown["result"] == "USER_UNKNOWN"
    reply = await nats_client.request(f"tg.{tenant_name}.charge.commit", b"not json", timeout=10)
    assert json.loads(reply.data)["result"] == "INVALID_REQUEST"


async def test_continue_mode_grants_the_quota_in_an_outage_and_books_it_afterwards(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    customer = await prepaid_line(pool, tenant_name, "0.10")
    unreachable = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0)
    assert unreachable is not None
    deferred: list[UsageEvent] = []

    async def publish(event: UsageEvent) -> None:
        deferred.append(event)

    request = json.dumps({"sessionId": "outage", "requestNumber": 0, "subscriber": LINE,
                          "service": "data", "units": 100 * MIB}).encode()
    terminate = OnlineCharging(tenant_name, unreachable, CatalogCache(tenant_name),
                               OnlinePolicy(), deferred=publish)
    assert await terminate.handle("reserve", request) == {"result": "UNABLE_TO_COMPLY"}

    policy = OnlinePolicy(failure_handling=FailureHandling.CONTINUE,
                          continue_quota_units=50 * MIB)
    online = OnlineCharging(tenant_name, unreachable, CatalogCache(tenant_name), policy,
                            deferred=publish)
    answer = await online.handle("reserve", request)
    assert answer["grantedUnits"] == 50 * MIB
    assert answer["deferred"] is True
    assert [e.quantity for e in deferred] == [50 * MIB]
    await unreachable.close()

    # The database is back: offline rating books the whole quota, 50 MiB × 0.01 = 0.50 EUR.
    # The balance covers 0.10; the other 0.40 goes to the customer's receivable.
    engine = ChargingEngine(ChargingSettings(tenant=tenant_name, database_url=servers.app_dsn,
                                             nats_url=servers.nats_url), pool)
    payload = json.dumps(usage_envelope(deferred[0])).encode()
    outcome = await engine.process([Delivered(f"tg.{tenant_name}.usage.data", payload)])
    assert outcome.rated == 1
    assert await account(servers, tenant_name, customer) == (0, 0)
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        owed = await conn.fetchval("SELECT balance_micros FROM ledger_accounts WHERE"
                                   " tenant_id = $1 AND account_id = $2", tenant_name,
                                   f"receivable:{customer}")
    finally:
        await conn.close()
    assert owed == -400_000


async def a_second_line(pool: Pool, tenant: str, line: str, top_up: str) -> uuid.UUID:
    """Another prepaid customer on the data-only offer of :func:`prepaid_line`."""
    customer = await customer_service.register_customer(
        pool, tenant, name=line, email=f"{line}@example.de", payment_type="prepaid",
        customer_type="consumer", idempotency_key=f"reg-{line}")
    await customer_service.place_order(pool, tenant, customer_id=customer,
                                       offer="prepaid-data", subscriber=line,
                                       idempotency_key=f"order-{line}")
    await customer_service.top_up(pool, tenant, customer_id=customer, amount=top_up,
                                  idempotency_key=f"topup-{line}")
    return customer


def reserve(session: str, units: int, line: str = LINE) -> bytes:
    return json.dumps({"sessionId": session, "requestNumber": 0, "subscriber": line,
                       "service": "data", "units": units}).encode()


async def test_a_group_decides_its_requests_one_after_another(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Requests arriving together share a transaction (one read, one lock, one write): each
    is still decided against what the ones before it in the group left."""
    customer = await prepaid_line(pool, tenant_name, "1.00")
    online = OnlineCharging(tenant_name, pool, CatalogCache(tenant_name), OnlinePolicy())
    try:
        first = await online.handle("reserve", reserve("a", 30 * MIB))
        # One group: a new reservation, the same request again, 80 MiB more (only 70 are
        # left), the commit of the first reservation and its release after it.
        fresh, again, more, committed, released = await asyncio.gather(
            online.handle("reserve", reserve("b", 20 * MIB)),
            online.handle("reserve", reserve("b", 20 * MIB)),
            online.handle("reserve", reserve("c", 80 * MIB)),
            online.handle("commit", json.dumps({"reservationId": first["reservationId"],
                                                "usedUnits": 10 * MIB}).encode()),
            online.handle("release", json.dumps(
                {"reservationId": first["reservationId"]}).encode()))
    finally:
        await online.close()
    assert (fresh["result"], fresh["grantedUnits"]) == ("SUCCESS", 20 * MIB)
    assert again == fresh
    # 1.00 EUR: 0.30 held by "a" and 0.20 by "b" when "c" is decided, so 0.50 are left.
    assert (more["result"], more["grantedUnits"]) == ("SUCCESS", 50 * MIB)
    assert (committed["result"], committed["chargedMicros"]) == ("SUCCESS", 100_000)
    assert released == {"result": "RESERVATION_CLOSED", "state": "posted"}
    # 0.10 posted; "b" and "c" hold 0.70.
    assert await account(servers, tenant_name, customer) == (900_000, 700_000)
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        events = await conn.fetch(
            "SELECT payload FROM outbox WHERE tenant_id = $1 AND subject LIKE '%balance.updated'"
            " ORDER BY created_at", tenant_name)
    finally:
        await conn.close()
    assert [json.loads(e["payload"])["data"]["balanceMicros"] for e in events] == [
        1_000_000, 900_000]  # the top-up, then the commit


class CountingFallbacks(OnlineCharging):
    """Counts the requests decided alone because their group's transaction rolled back (a
    deadlock, a serialization failure, an error)."""

    fallbacks = 0

    async def _decide_alone(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        self.fallbacks += 1
        return await super()._decide_alone(operation, body)


async def test_groups_sharing_lines_never_deadlock(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Many sessions at once on a few lines: every group locks its rows in one order, so
    groups that share lines wait for each other but never deadlock, and nothing is lost."""
    customers = [await prepaid_line(pool, tenant_name, "10.00")]
    lines = [LINE, "491709999998", "491709999997"]
    customers += [await a_second_line(pool, tenant_name, line, "10.00") for line in lines[1:]]
    online = CountingFallbacks(tenant_name, pool, CatalogCache(tenant_name), OnlinePolicy())

    async def session(i: int) -> tuple[str, str]:
        granted = await online.handle("reserve", reserve(f"s{i}", MIB, lines[i % 3]))
        done = await online.handle("commit", json.dumps({
            "reservationId": granted["reservationId"], "usedUnits": MIB // 2}).encode())
        return granted["result"], done["result"]

    try:
        results = await asyncio.gather(*[session(i) for i in range(300)])
    finally:
        await online.close()
    assert set(results) == {("SUCCESS", "SUCCESS")}
    assert online.fallbacks == 0
    # 100 half-used MiB per line at 0.01 EUR/MiB: 0.50 EUR each.
    for customer in customers:
        assert await account(servers, tenant_name, customer) == (9_500_000, 0)
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        assert await conn.fetchval(
            "SELECT count(*) FROM rated_usage WHERE tenant_id = $1", tenant_name) == 300
    finally:
        await conn.close()
