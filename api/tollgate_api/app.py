"""The ASGI application: GraphQL over HTTP (and websockets), health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UNSET, UnsetType

from tollgate_api.admission import Admission, Connection
from tollgate_api.auth import Principal, TokenVerifier, Unauthenticated
from tollgate_api.context import Context
from tollgate_api.credentials import API_KEY_HEADER, Credentials
from tollgate_api.fanout import LegacyWS, LiveTransportWS, LiveWebSocketAdapter
from tollgate_api.http import GraphQLHTTP
from tollgate_api.live import EventHub
from tollgate_api.ratelimit import RateLimiter
from tollgate_api.schema import build_schema
from tollgate_core.bus.nats import connect
from tollgate_core.settings import ApiSettings
from tollgate_core.store.db import Pool, create_pool

_CONNECTION = "tollgate.connection"
"""ASGI scope key of a websocket's admission state (given back when the connection ends)."""


class TollgateGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view, for websockets (graphql-transport-ws) and the GraphiQL page;
    GET and POST requests are `GraphQLHTTP`'s. The credential decides the tenant.
    Subscriptions over graphql-transport-ws share one execution per event among the
    subscribers whose results cannot differ (`tollgate_api.fanout`). Websocket connections
    are admitted per credential (`tollgate_api.admission`)."""

    graphql_transport_ws_handler_class = LiveTransportWS
    graphql_ws_handler_class = LegacyWS
    websocket_adapter_class = LiveWebSocketAdapter

    def __init__(self, credentials: Credentials, graphiql: bool,
                 clock: Callable[[], datetime] | None = None,
                 admission: Admission | None = None,
                 operations_per_connection: int = 100) -> None:
        super().__init__(build_schema(introspection=graphiql),
                         graphql_ide="graphiql" if graphiql else None,
                         connection_init_wait_timeout=timedelta(seconds=10),
                         max_subscriptions_per_connection=operations_per_connection)
        self.credentials = credentials
        self.admission = admission or Admission(None, 0)
        self.pool: Pool | None = None
        self.hub = EventHub()
        self.clock = clock or (lambda: datetime.now(UTC))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            connection = scope.get(_CONNECTION) if scope["type"] == "websocket" else None
            if isinstance(connection, Connection):
                self.admission.release(connection)  # however the connection ended

    def new_context(self, caller: Principal | None = None) -> Context:
        """The one place a request's context is made (HTTP and websocket)."""
        assert self.pool is not None, "the app lifespan opens the pool"
        return Context(pool=self.pool, hub=self.hub, caller=caller, clock=self.clock)

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        """Websockets only: authenticated later by on_ws_connect, from connection_init."""
        context = self.new_context()
        connection = Connection(request.client.host if request.client else "")
        request.scope[_CONNECTION] = context.connection = connection
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """The credential travels in the connection_init payload (`Authorization`, or a
        partner's `X-Api-Key`). Admission takes a token of the caller's rate-limit bucket
        (an invalid credential: of its address's, before it is refused, as over HTTP) and
        one of the credential's connection slots (ConnectionThrottled otherwise)."""
        params = {k.lower(): v for k, v in context.connection_params.items()}
        api_key = params.get(API_KEY_HEADER)
        principal: Principal | None = None
        failure = ""
        try:
            principal = await self.credentials.authenticate(
                str(params.get("authorization", "")), None if api_key is None else str(api_key))
        except Unauthenticated as exc:
            failure = str(exc)
        if context.connection is not None:
            self.admission.admit(context.connection, principal)
        if principal is None:
            raise ConnectionRejectionError({"reason": failure})
        context.caller = principal
        acknowledged: UnsetType = UNSET  # plain connection_ack, no payload
        return acknowledged


BODY_MAX_BYTES = 64 * 1024


class BodySizeLimit:
    """Refuse request bodies over BODY_MAX_BYTES with 413 before reading them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length")
            refusal = None
            if length is None or not length.isdigit():
                refusal = PlainTextResponse("a Content-Length header is required", 411)
            elif int(length) > BODY_MAX_BYTES:
                refusal = PlainTextResponse(f"request body over {BODY_MAX_BYTES} bytes", 413)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def open_pool(database_url: str) -> Pool:
    """The API process's pool. Its transactions send the session reset with their COMMIT
    (no round trip of its own on release)."""
    return await create_pool(database_url, max_size=20, reset_with_commit=True)


def create_app(settings: ApiSettings, clock: Callable[[], datetime] | None = None) -> Starlette:
    """`clock`: the time partners' network API calls are metered at (default: now)."""
    verifier = TokenVerifier(settings.jwt_secret, settings.jwt_issuer)
    credentials = Credentials(verifier)
    graphql = TollgateGraphQL(credentials, settings.graphiql, clock,
                              operations_per_connection=settings.ws_operations_per_connection)
    limiter = (RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
               if settings.rate_limit_per_s > 0 else None)
    graphql.admission = Admission(limiter, settings.ws_connections_per_credential)
    http = GraphQLHTTP(graphql.schema, credentials, graphql.new_context, limiter,
                       graphql.render_graphql_ide if settings.graphiql else None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        graphql.pool = await open_pool(settings.database_url)
        verifier.attach(graphql.pool)  # tenant issuers: specs read through the pool
        credentials.pool = graphql.pool  # partner API keys: looked up by their digest
        nc = await connect(settings.nats_url, name="tollgate-api")
        await graphql.hub.start(nc)
        try:
            yield
        finally:
            await graphql.hub.stop()
            await nc.close()
            await graphql.pool.close()

    async def healthz(request: Request) -> Response:
        assert graphql.pool is not None
        await graphql.pool.fetchval("SELECT 1")
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(lifespan=lifespan, middleware=[Middleware(BodySizeLimit)], routes=[
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/graphql", http.handle, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
    ])
