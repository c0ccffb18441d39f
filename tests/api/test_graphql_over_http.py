"""GraphQL over HTTP, request by request: media types by Accept, status codes by media type,
GET for queries only, unsupported bodies and batches refused (the npm audit suite covers
the rest, see test_graphql_http_audit.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.running import Api

GRAPHQL_RESPONSE = "application/graphql-response+json"
QUERY = "{ offers { totalCount } }"


async def request(api: Api, method: str, token: str | None, *, accept: str | None = None,
                  params: dict[str, str] | None = None, body: bytes | None = None,
                  content_type: str | None = "application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if accept is not None:
        headers["Accept"] = accept
    if content_type is not None and method == "POST":
        headers["Content-Type"] = content_type
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(method, api.url, params=params, content=body,
                                    headers=headers)


def post_body(query: str, **extra: Any) -> bytes:
    return json.dumps({"query": query, **extra}).encode()


async def test_the_response_media_type_follows_accept(api: Api, tenant_name: str) -> None:
    token = api.token(tenant_name)
    for accept, expected in [
            (None, "application/json"),
            ("*/*", "application/json"),
            ("application/json", "application/json"),
            (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
            (f"application/json, {GRAPHQL_RESPONSE}", GRAPHQL_RESPONSE),
            (f"{GRAPHQL_RESPONSE};q=0.5, application/json", "application/json"),
            ("application/*;q=0.9", "application/json")]:
        response = await request(api, "POST", token, accept=accept, body=post_body(QUERY))
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["content-type"] == expected, accept
        assert response.json() == {"data": {"offers": {"totalCount": 0}}}

    refused = await request(api, "POST", token, accept="text/html", body=post_body(QUERY))
    assert refused.status_code == 406
    assert refused.json()["errors"][0]["extensions"]["code"] == "NOT_ACCEPTABLE"


async def test_request_errors_are_400_under_graphql_response_json_and_200_under_json(
        api: Api, tenant_name: str) -> None:
    token = api.token(tenant_name)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("{ offers { totalCount }", {}),                                         # no parse
        ("{ noSuchField }", {}),                                                 # invalid
        ("query Q($id: UUID!) { customer(id: $id) { id } }",
         {"variables": {"id": "not-a-uuid"}}),                                   # no coercion
        ("query A { __typename }", {"operationName": "B"})]                      # no such op
    for query, extra in cases:
        strict = await request(api, "POST", token, accept=GRAPHQL_RESPONSE,
                               body=post_body(query, **extra))
        assert strict.status_code == 400, query
        assert strict.headers["content-type"] == GRAPHQL_RESPONSE
        assert "data" not in strict.json() and strict.json()["errors"], strict.text

        legacy = await request(api, "POST", token, accept="application/json",
                               body=post_body(query, **extra))
        assert legacy.status_code == 200, query
        assert "data" not in legacy.json() and legacy.json()["errors"], legacy.text


async def test_a_field_error_is_200_with_data_under_both_media_types(
        api: Api, tenant_name: str) -> None:
    """`customer` of an unknown id fails in execution: a field error, not a request error."""
    query = ('{ offers { totalCount } customer(id: "00000000-0000-0000-0000-000000000000")'
             " { id } }")
    for accept in (GRAPHQL_RESPONSE, "application/json"):
        response = await request(api, "POST", api.token(tenant_name), accept=accept,
                                 body=post_body(query))
        assert response.status_code == 200
        body = response.json()
        assert "data" in body
        assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_get_runs_queries_and_refuses_mutations_with_405(api: Api,
                                                               tenant_name: str) -> None:
    token = api.token(tenant_name)
    response = await request(api, "GET", token, accept=GRAPHQL_RESPONSE, params={
        "query": "query Q($first: Int!) { offers(first: $first) { totalCount } }",
        "variables": json.dumps({"first": 5}), "operationName": "Q"})
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"offers": {"totalCount": 0}}}

    mutation = ('mutation { topUp(input: {customerId: "00000000-0000-0000-0000-000000000000",'
                ' amount: "1"}, idempotencyKey: "k") { __typename } }')
    refused = await request(api, "GET", token, params={"query": mutation})
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"
    assert refused.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"

    other_method = await request(api, "PUT", token, body=post_body(QUERY))
    assert other_method.status_code == 405
    assert set(other_method.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_subscriptions_over_http_are_pointed_to_websockets(api: Api,
                                                                 tenant_name: str) -> None:
    query = ('subscription { balanceChanged(customerId: "00000000-0000-0000-0000-000000000000")'
             " { cause } }")
    response = await request(api, "POST", api.token(tenant_name), body=post_body(query))
    assert response.status_code == 400
    assert "graphql-transport-ws" in response.json()["errors"][0]["message"]


async def test_unsupported_content_types_are_415(api: Api, tenant_name: str) -> None:
    token = api.token(tenant_name)
    for content_type in ("text/plain", "application/x-www-form-urlencoded",
                         "application/json; charset=latin-1", None):
        response = await request(api, "POST", token, body=post_body(QUERY),
                                 content_type=content_type)
        assert response.status_code == 415, content_type
        assert response.json()["errors"][0]["extensions"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    accepted = await request(api, "POST", token, body=post_body(QUERY),
                             content_type="Application/JSON; charset=UTF-8")
    assert accepted.status_code == 200


async def test_malformed_requests_and_batches_are_400(api: Api, tenant_name: str) -> None:
    token = api.token(tenant_name)
    for body in (b"", b"{ not json", b'"a string"', b'{"qeury": "{ __typename }"}',
                 b'{"query": 1}', b'{"query": "{ __typename }", "variables": []}',
                 b'{"query": "{ __typename }", "operationName": 0}',
                 b'{"query": "{ __typename }", "extensions": "x"}'):
        response = await request(api, "POST", token, accept=GRAPHQL_RESPONSE, body=body)
        assert response.status_code == 400, body
        assert response.json()["errors"][0]["message"], body

    batch = json.dumps([{"query": "{ __typename }"}, {"query": "{ __typename }"}]).encode()
    for accept in (GRAPHQL_RESPONSE, "application/json"):
        response = await request(api, "POST", token, accept=accept, body=batch)
        assert response.status_code == 400
        error = response.json()["errors"][0]
        assert error["extensions"]["code"] == "BATCHING_NOT_SUPPORTED"
        assert "one operation per request" in error["message"]


async def test_an_unauthenticated_request_is_401_with_a_bearer_challenge(api: Api) -> None:
    response = await request(api, "POST", None, accept=GRAPHQL_RESPONSE,
                             body=post_body("{ __typename }"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_body_without_length_is_411(api: Api, tenant_name: str) -> None:
    async def chunks() -> Any:
        yield post_body(QUERY)

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(api.url, content=chunks(), headers={
            "Authorization": f"Bearer {api.token(tenant_name)}",
            "Content-Type": "application/json"})
    assert response.status_code == 411


async def test_a_browser_gets_the_graphiql_page_without_a_token(api: Api) -> None:
    """The page is static; the queries it sends carry the token (GraphiQL's headers tab)."""
    response = await request(api, "GET", None,
                             accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()

    with_query = await request(api, "GET", None, accept="text/html,*/*;q=0.8",
                               params={"query": "{ __typename }"})
    assert with_query.status_code == 401  # a GraphQL request, not the page
