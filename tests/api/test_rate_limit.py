"""Per-credential rate limiting over real HTTP, on a second server with a tight limit: a
burst of 3 and one new request per 100 s, so no request of this test can earn a token
back however slow the machine is."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from tests.conftest import Servers
from tests.running import Api, serve_api

BURST = 3
PER_S = 0.01
QUERY = {"query": "{ __typename }"}


@pytest_asyncio.fixture
async def tight_api(servers: Servers) -> AsyncIterator[Api]:
    async with serve_api(servers, rate_limit_per_s=PER_S, rate_limit_burst=BURST) as api:
        yield api


async def post(client: httpx.AsyncClient, api: Api, token: str | None,
               accept: str = "application/graphql-response+json") -> httpx.Response:
    headers = {"Accept": accept}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post(api.url, json=QUERY, headers=headers)


async def test_a_credential_past_its_burst_gets_429_with_retry_after(
        tight_api: Api, tenant_name: str) -> None:
    alice = tight_api.token(tenant_name, subject="alice")
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [(await post(client, tight_api, alice)).status_code for _ in range(BURST)]
        assert statuses == [200] * BURST
        for accept in ("application/graphql-response+json", "application/json"):
            refused = await post(client, tight_api, alice, accept)
            assert refused.status_code == 429
            assert refused.headers["content-type"] == accept
            retry_after = refused.headers["retry-after"]
            assert retry_after.isdigit() and 1 <= int(retry_after) <= 1 / PER_S, retry_after
            error = refused.json()["errors"][0]
            assert error["extensions"]["code"] == "RATE_LIMITED"
            assert "retry after" in error["message"]
            assert "data" not in refused.json()

        # The bucket is the credential's: another subject, or the same subject in another
        # tenant, still has its own burst.
        bob = tight_api.token(tenant_name, subject="bob")
        assert (await post(client, tight_api, bob)).status_code == 200
        elsewhere = tight_api.token(tenant_name + "x", subject="alice")
        assert (await post(client, tight_api, elsewhere)).status_code == 200

        metrics = (await client.get(tight_api.url.replace("/graphql", "/metrics"))).text
        refusals = [float(line.split()[1]) for line in metrics.splitlines()
                    if line.startswith("tollgate_api_rate_limited_total ")]
        assert refusals and refusals[0] >= 2


async def test_anonymous_callers_are_limited_by_address(tight_api: Api,
                                                        tenant_name: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [(await post(client, tight_api, None)).status_code
                    for _ in range(BURST + 1)]
        assert statuses == [401] * BURST + [429]
        forged = await post(client, tight_api, "forged.token.value")
        assert forged.status_code == 429  # a bad token is anonymous: same address bucket
        # A valid credential from the same address is counted on its own.
        valid = tight_api.token(tenant_name, subject="carol")
        assert (await post(client, tight_api, valid)).status_code == 200


async def test_the_default_limit_lets_a_normal_client_through(api: Api,
                                                              tenant_name: str) -> None:
    """The shared server runs with the defaults (50/s, burst 100): 60 quick requests pass."""
    token = api.token(tenant_name, subject="dashboard")
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = {(await post(client, api, token)).status_code for _ in range(60)}
    assert statuses == {200}
