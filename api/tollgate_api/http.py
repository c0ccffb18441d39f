"""GraphQL over HTTP, after the GraphQL-over-HTTP specification (graphql/graphql-over-http).

- `POST` with `Content-Type: application/json` runs queries and mutations; `GET` with the
  parameters in the query string runs queries only (a mutation over GET is 405 with
  `Allow: POST`). Subscriptions are served over websockets (graphql-transport-ws).
- The response media type follows the `Accept` header: `application/graphql-response+json`
  when the client names it (and does not prefer `application/json`), `application/json`
  for `application/json`, `*/*` or no `Accept` at all, 406 when neither is acceptable.
- Under `application/graphql-response+json` a request error (the document does not parse or
  validate, variables do not coerce: no `data`) is 400; under `application/json` every
  well-formed request is 200, as the spec asks for legacy clients. A request that is not
  well-formed (body not JSON, parameters of the wrong type) is 400 either way; an
  unsupported `Content-Type` is 415. Operation batching (a JSON array) is refused.
- Before any of that: the credential is checked (a bearer token, or a partner's API key in
  `Authorization: ApiKey` or `X-Api-Key`, looked up in PostgreSQL) and the caller's rate
  limit taken (429 with `Retry-After`); an unauthenticated request is 401.
- A partner's network API call refused by its agreement's calls per second (error code
  `RATE_LIMITED`, ADR 0015) is 429 with `Retry-After` too, with the GraphQL result as body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from graphql import GraphQLError
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from strawberry.exceptions import MissingQueryError
from strawberry.schema.base import BaseSchema
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from tollgate_api.auth import Principal, Unauthenticated
from tollgate_api.context import Context
from tollgate_api.credentials import API_KEY_HEADER, CHALLENGES, Credentials
from tollgate_api.ratelimit import RateLimiter

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"

RATE_LIMITED = Counter("tollgate_api_rate_limited_total",
                       "GraphQL HTTP requests refused with 429 by the per-credential limit")

MakeContext = Callable[[Principal], Context]
RenderIde = Callable[[Request], Awaitable[Response]]


class RequestRefused(Exception):
    """The request never reaches GraphQL execution: a status, a message and headers."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST",
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    """`Accept` as (media range, q) pairs; ranges with unreadable q count as q=0."""
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    return ranges


def _quality(ranges: list[tuple[str, float]], media: str) -> tuple[float, bool]:
    """q of `media` by the most specific matching range, and whether it was named exactly."""
    kind = media.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for pattern, q in ranges:
        if pattern == media:
            specificity = 2
        elif pattern == f"{kind}/*":
            specificity = 1
        elif pattern == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, q)
    return best[1], best[0] == 2


def negotiate(accept: str | None) -> str | None:
    """The response media type for an `Accept` header, None when neither is acceptable."""
    if accept is None or not accept.strip():
        return JSON
    ranges = _media_ranges(accept)
    q_graphql, named = _quality(ranges, GRAPHQL_RESPONSE_JSON)
    q_json, _ = _quality(ranges, JSON)
    if q_graphql <= 0 and q_json <= 0:
        return None
    if q_graphql > q_json or (q_graphql == q_json and named):
        return GRAPHQL_RESPONSE_JSON
    return JSON


def wants_html(accept: str | None) -> bool:
    return accept is not None and "text/html" in accept.lower()


def _json_parameter(params: Mapping[str, Any], name: str, encoded: bool) -> dict[str, Any] | None:
    """`variables` or `extensions`: a map or null (in a GET, JSON in the query string)."""
    value = params.get(name)
    if encoded and isinstance(value, str):
        try:
            value = json.loads(value) if value else None
        except ValueError as exc:
            raise RequestRefused(400, f"`{name}` is not valid JSON") from exc
    if value is not None and not isinstance(value, dict):
        raise RequestRefused(400, f"`{name}` must be a map or null")
    return value


def _content_type(request: Request) -> None:
    header = request.headers.get("content-type")
    if header is None:
        raise RequestRefused(415, "Content-Type: application/json is required",
                             "UNSUPPORTED_MEDIA_TYPE", {"Accept-Post": JSON})
    media, *params = (part.strip() for part in header.split(";"))
    charset = next((v.strip().strip('"').lower() for p in params
                    for n, _, v in [p.partition("=")] if n.strip().lower() == "charset"),
                   "utf-8")
    if media.lower() != JSON or charset not in {"utf-8", "utf8"}:
        raise RequestRefused(415, f"unsupported Content-Type {header!r}: send "
                             "application/json (utf-8)", "UNSUPPORTED_MEDIA_TYPE",
                             {"Accept-Post": JSON})


async def _parameters(request: Request) -> tuple[dict[str, Any], bool]:
    """The request's GraphQL parameters, and whether they came from a GET query string."""
    if request.method in {"GET", "HEAD"}:
        return dict(request.query_params), True
    _content_type(request)
    body = await request.body()
    if not body:
        raise RequestRefused(400, "the request body is empty: send a JSON object with `query`")
    try:
        params = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestRefused(400, "the request body is not valid UTF-8 JSON") from exc
    if isinstance(params, list):
        raise RequestRefused(400, "operation batching is not supported: send one operation "
                             "per request", "BATCHING_NOT_SUPPORTED")
    if not isinstance(params, dict):
        raise RequestRefused(400, "the request body must be a JSON object")
    return params, False


def _is_request_error(result: ExecutionResult) -> bool:
    """No execution happened: parsing, validation or variable coercion failed. Field errors
    always carry a path; these never do."""
    return result.data is None and bool(result.errors) and all(
        error.path is None for error in result.errors or [])


def _errors_body(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


class GraphQLHTTP:
    """The `/graphql` endpoint for GET and POST (websockets are strawberry's view)."""

    def __init__(self, schema: BaseSchema, credentials: Credentials, make_context: MakeContext,
                 limiter: RateLimiter | None = None, render_ide: RenderIde | None = None
                 ) -> None:
        self.schema = schema
        self.credentials = credentials
        self.make_context = make_context
        self.limiter = limiter
        self.render_ide = render_ide

    async def handle(self, request: Request) -> Response:
        accept = request.headers.get("accept")
        if (request.method in {"GET", "HEAD"} and self.render_ide is not None and wants_html(accept)
                and "query" not in request.query_params):
            return await self.render_ide(request)  # a static page; its requests carry tokens
        media = negotiate(accept)
        if media is None:
            return self._respond(JSON, 406, _errors_body(
                f"not acceptable: this endpoint answers {GRAPHQL_RESPONSE_JSON} or {JSON}",
                "NOT_ACCEPTABLE"))
        try:
            principal = await self._authenticate(request)
            params, from_get = await _parameters(request)
            return await self._execute(media, principal, params, from_get)
        except RequestRefused as refused:
            return self._respond(media, refused.status,
                                 _errors_body(refused.message, refused.code), refused.headers)

    async def _authenticate(self, request: Request) -> Principal:
        """Check the credential and take one token from the caller's bucket."""
        principal: Principal | None = None
        failure = "missing bearer token or API key"
        try:
            principal = await self.credentials.authenticate(
                request.headers.get("authorization"), request.headers.get(API_KEY_HEADER))
        except Unauthenticated as exc:
            failure = str(exc)
        if self.limiter is not None:
            key: tuple[str, ...] = (
                ("credential", principal.tenant, principal.subject) if principal is not None
                else ("address", request.client.host if request.client else ""))
            verdict = self.limiter.take(key)
            if not verdict.allowed:
                RATE_LIMITED.inc()
                raise RequestRefused(
                    429, f"rate limit exceeded ({self.limiter.per_second:g} requests/s, burst "
                    f"{self.limiter.burst}): retry after {verdict.retry_after_s} s",
                    "RATE_LIMITED", {"Retry-After": str(verdict.retry_after_s)})
        if principal is None:
            raise RequestRefused(401, failure, "UNAUTHENTICATED",
                                 {"WWW-Authenticate": CHALLENGES})
        return principal

    async def _execute(self, media: str, principal: Principal, params: dict[str, Any],
                       from_get: bool) -> Response:
        query = params.get("query")
        if not isinstance(query, str):
            raise RequestRefused(400, "the request needs a `query` string")
        operation_name = params.get("operationName")
        if operation_name is not None and not isinstance(operation_name, str):
            raise RequestRefused(400, "`operationName` must be a string or null")
        variables = _json_parameter(params, "variables", from_get)
        extensions = _json_parameter(params, "extensions", from_get)
        allowed = ({OperationType.QUERY} if from_get
                   else {OperationType.QUERY, OperationType.MUTATION})
        try:
            result = await self.schema.execute(
                query, variable_values=variables, context_value=self.make_context(principal),
                operation_name=operation_name, allowed_operation_types=allowed,
                operation_extensions=extensions)
        except InvalidOperationTypeError as exc:
            if exc.operation_type is OperationType.MUTATION:
                raise RequestRefused(405, "mutations are not allowed over GET: use POST",
                                     "METHOD_NOT_ALLOWED", {"Allow": "POST"}) from exc
            raise RequestRefused(400, "subscriptions are served over websockets "
                                 "(graphql-transport-ws) at this URL") from exc
        except CannotGetOperationTypeError as exc:
            return self._request_error(media, exc.as_http_error_reason())
        except MissingQueryError:
            return self._request_error(media, "the query is empty")
        if _is_request_error(result):
            assert result.errors is not None
            status = 400 if media == GRAPHQL_RESPONSE_JSON else 200
            return self._respond(media, status,
                                 {"errors": [error.formatted for error in result.errors]})
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        if result.extensions:
            body["extensions"] = result.extensions
        # A partner's network API call over its agreement's calls per second (ADR 0015).
        waits = [int(error.extensions.get("retryAfter", 1)) for error in result.errors or []
                 if error.extensions and error.extensions.get("code") == "RATE_LIMITED"]
        if waits:
            return self._respond(media, 429, body, {"Retry-After": str(max(waits))})
        return self._respond(media, 200, body)

    def _request_error(self, media: str, message: str) -> Response:
        status = 400 if media == GRAPHQL_RESPONSE_JSON else 200
        return self._respond(media, status, {"errors": [GraphQLError(message).formatted]})

    @staticmethod
    def _respond(media: str, status: int, body: dict[str, Any],
                 headers: Mapping[str, str] | None = None) -> Response:
        content = orjson.dumps(body)  # UTF-8, compact; a tenth of json.dumps's time
        return Response(content, status, headers={"Vary": "Accept", **(headers or {})},
                        media_type=media)
