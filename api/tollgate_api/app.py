"""The ASGI application: GraphQL over HTTP (and websockets), health and metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cross_web import HTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from tollgate_api.auth import TokenVerifier, Unauthenticated
from tollgate_api.context import Context
from tollgate_api.schema import build_schema
from tollgate_core.settings import ApiSettings
from tollgate_core.store.db import Pool, create_pool


class TollgateGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view with our context: the credential decides the tenant."""

    def __init__(self, verifier: TokenVerifier, graphiql: bool) -> None:
        super().__init__(build_schema(), graphql_ide="graphiql" if graphiql else None)
        self.verifier = verifier
        self.pool: Pool | None = None

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        assert self.pool is not None, "the app lifespan opens the pool"
        try:
            principal = self.verifier.verify(request.headers.get("authorization"))
        except Unauthenticated as exc:
            raise HTTPException(401, str(exc)) from exc
        return Context(principal=principal, pool=self.pool)


def create_app(settings: ApiSettings) -> Starlette:
    graphql = TollgateGraphQL(TokenVerifier(settings.jwt_secret, settings.jwt_issuer),
                              settings.graphiql)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        graphql.pool = await create_pool(settings.database_url, max_size=20)
        try:
            yield
        finally:
            await graphql.pool.close()

    async def healthz(request: Request) -> Response:
        assert graphql.pool is not None
        await graphql.pool.fetchval("SELECT 1")
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(lifespan=lifespan, routes=[
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
    ])
