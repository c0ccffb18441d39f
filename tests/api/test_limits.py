"""Requests are bounded: aliases, body size, credentials. (The schema has no cycles yet, so
the depth limit cannot be reached; it guards the types to come.)"""

from __future__ import annotations

import httpx

from tests.running import Api


async def post(api: Api, body: bytes | dict[str, object], token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as client:
        if isinstance(body, bytes):
            return await client.post(api.url, content=body, headers={
                **headers, "Content-Type": "application/json"})
        return await client.post(api.url, json=body, headers=headers)


async def test_a_request_without_a_credential_is_refused(api: Api) -> None:
    response = await post(api, {"query": "{ offers { totalCount } }"}, None)
    assert response.status_code == 401


async def test_too_many_aliases_are_refused(api: Api, tenant_name: str) -> None:
    query = "{ " + " ".join(f"a{i}: offers {{ totalCount }}" for i in range(31)) + " }"
    body = (await post(api, {"query": query}, api.token(tenant_name))).json()
    assert "aliases found" in body["errors"][0]["message"]


async def test_an_oversized_body_is_refused_before_it_is_read(api: Api, tenant_name: str) -> None:
    body = b'{"query": "{ offers { totalCount } }", "pad": "' + b"x" * 70_000 + b'"}'
    response = await post(api, body, api.token(tenant_name))
    assert response.status_code == 413
