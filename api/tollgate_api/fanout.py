"""Live subscriptions over graphql-transport-ws, executed once per event for all subscribers
whose results cannot differ (ADR 0009).

strawberry runs a subscription's selection set, its extensions and the JSON encoding once per
subscriber per event. Here a `subscribe` message still goes through strawberry — parsing,
validation, limits, masking, and the resolver, which authorises the caller once — but an
authorised resolver does not yield events: it hands its operation to `EventHub.subscribe`,
keyed by everything the result depends on:

- the tenant, the event and the customer filter (`customerId`, or the whole tenant);
- the audience: a principal made of the caller's tenant, customer scope and roles only (never
  the subject of a staff credential), under which the shared execution runs — so what one
  subscriber is sent never depends on who else subscribed first;
- the operation: its document text, operation name and variables.

The first subscriber of a key builds a graphql-core executor for the operation (the same
executor class, schema and error masking as strawberry's); the hub then runs it once per event
and gives each subscriber the serialized payload, which the operation's own task wraps as a
`next` message (its id differs per subscriber) and sends. A slow websocket delays only its
own operation.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Hashable
from contextvars import ContextVar
from typing import Any

from graphql import GraphQLError, execute_subscription_event, parse
from starlette.websockets import WebSocketDisconnect, WebSocketState
from strawberry import Schema
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.extensions import MaskErrors
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInit,
)
from strawberry.types import Info

from tollgate_api.admission import TRY_AGAIN_LATER, WS_REFUSED, ConnectionThrottled
from tollgate_api.auth import Principal
from tollgate_api.common import is_internal
from tollgate_api.context import Context
from tollgate_api.live import Render

_MASK = MaskErrors(should_mask_error=is_internal)  # the schema's masking, for shared results
_AUDIENCE_ROLES = frozenset({"customer", "agent", "admin"})


def audience(ctx: Context) -> Principal:
    """Who the caller may see, without who the caller is: their tenant, customer scope
    (themself, or the whole tenant for staff) and roles. Shared executions run as this."""
    principal = ctx.principal
    scope = ctx.customer_scope()
    roles = principal.roles & _AUDIENCE_ROLES
    subject = str(scope) if scope is not None else "audience:" + "+".join(sorted(roles))
    return Principal(principal.tenant, subject, roles)


def shared_render(schema: Schema, query: str, variables: dict[str, Any] | None,
                  operation_name: str | None, context: Context,
                  root: Callable[[dict[str, Any]], object]) -> Render:
    """Execute the subscription `query` for an event's `data` (made into the root field's
    value by `root`) and serialize the `next` payload. The document and variables were
    parsed, validated and coerced by strawberry for the same text before this is called."""
    built = schema.execution_context_class.build(
        schema._schema, parse(query), None, context, variables, operation_name)
    if isinstance(built, list):  # not expected: the same operation was just coerced
        raise built[0] if built else GraphQLError("the subscription cannot be executed")
    executor = built

    async def render(data: dict[str, Any]) -> str:
        event = executor.build_per_event_executor(root(data))
        context.forget_reads()  # each event reads current data (fresh DataLoaders)
        outcome = execute_subscription_event(event)
        result = await outcome if inspect.isawaitable(outcome) else outcome
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            schema.process_errors(result.errors)
            payload["errors"] = [
                (_MASK.anonymise_error(e) if _MASK.should_mask_error(e) else e).formatted
                for e in result.errors]
        return json.dumps(payload, separators=(",", ":"))

    return render


class LiveWebSocketAdapter(ASGIWebSocketAdapter):
    """strawberry's ASGI websocket adapter, able to send text that is already JSON."""

    async def send_text(self, text: str) -> None:
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            raise WebSocketDisconnected  # closed (by the handler) while this was pending
        try:
            await self.ws.send_text(text)
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


class _Feed:
    """How an adopted operation follows its feed: what the hub keys it by, how the feed's
    executor is made, and the frame its payloads are sent in."""

    __slots__ = ("audience", "context", "customer", "event", "key", "operation", "prefix",
                 "render", "root", "schema")

    def __init__(self, schema: Schema, operation: Operation[Context, None], context: Context,
                 event: str, customer: str | None, root: Callable[[dict[str, Any]], object]
                 ) -> None:
        self.schema = schema
        self.operation = operation
        self.context = context  # the connection's
        self.audience = audience(context)  # whom the shared execution runs as
        self.event = event
        self.customer = customer
        self.root = root
        variables = json.dumps(operation.variables, sort_keys=True, separators=(",", ":"))
        self.key: Hashable = (self.audience, operation.query, operation.operation_name,
                              variables)
        self.prefix = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'
        self.render: Render | None = None

    def make_render(self) -> Render:
        """The feed's renderer (built once; kept here only until the feed holds it)."""
        render, self.render = self.render, None
        if render is not None:
            return render
        op, ctx = self.operation, self.context
        shared = Context(pool=ctx.pool, hub=ctx.hub, caller=self.audience, clock=ctx.clock)
        return shared_render(self.schema, op.query, op.variables, op.operation_name, shared,
                             self.root)


class OperationSink:
    """The graphql-transport-ws operation a subscription resolver runs in. An authorised live
    subscription is adopted: strawberry's stream for it ends there (releasing its extensions,
    execution context and generators), and the operation's task then serves the feed."""

    __slots__ = ("feed", "handler", "operation")

    def __init__(self, handler: LiveTransportWS, operation: Operation[Context, None]) -> None:
        self.handler = handler
        self.operation = operation
        self.feed: _Feed | None = None

    def adopt(self, info: Info[Context, None], event: str, customer: str | None,
              root: Callable[[dict[str, Any]], object]) -> None:
        """Follow the shared results of `event`s about `customer` (None: the whole tenant),
        `root` making an event's `data` into the subscription field's value."""
        ctx = info.context
        feed = _Feed(info.schema, self.operation, ctx, event, customer, root)
        # The first subscriber of a feed builds its executor now, so that a failure is this
        # operation's error result (should the feed be gone when this is served, it is built
        # again then).
        if not ctx.hub.has_feed(ctx.tenant, event, customer, feed.key):
            feed.render = feed.make_render()
        self.feed = feed
        # strawberry sends nothing more for this operation, not even `complete` when its
        # stream ends now; the operation stays registered with the handler, so a client's
        # `complete`, the subscription limit and the end of the connection work as before.
        self.operation.completed = True

    async def serve(self) -> None:
        """Send the feed's results as `next` messages until this task is cancelled."""
        feed = self.feed
        assert feed is not None
        websocket = self.handler.websocket
        assert isinstance(websocket, LiveWebSocketAdapter)
        hub, prefix = feed.context.hub, feed.prefix
        async with hub.subscribe(feed.context.tenant, feed.event, feed.customer, feed.key,
                                 feed.make_render) as outbox:
            while True:
                payload = await outbox.get()
                try:
                    await websocket.send_text(prefix + payload + "}")
                except WebSocketDisconnected:
                    await asyncio.Future()  # the handler's shutdown cancels this task


_SINK: ContextVar[OperationSink | None] = ContextVar("tollgate_live_sink", default=None)


def operation_sink() -> OperationSink | None:
    """The sink of the graphql-transport-ws operation this task runs, if any."""
    return _SINK.get()


class LiveTransportWS(BaseGraphQLTransportWSHandler[Context, None]):
    """strawberry's graphql-transport-ws handler; each operation's task knows its sink.
    A connection refused by admission is closed with 1013 and the reason; a subscribe
    beyond the connection's operation limit is an `error` naming the limit."""

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        try:
            await super().handle_connection_init(message)
        except ConnectionThrottled as refused:
            await self.websocket.close(code=TRY_AGAIN_LATER, reason=refused.reason)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        limit = self.max_subscriptions_per_connection
        if (self.connection_acknowledged and limit is not None
                and message["id"] not in self.operations and len(self.operations) >= limit):
            WS_REFUSED.labels("subscriptionLimit").inc()
            await self.send_message({"id": message["id"], "type": "error", "payload": [{
                "message": f"at most {limit} subscriptions at once on one connection: "
                           "complete one first",
                "extensions": {"code": "SUBSCRIPTION_LIMIT", "limit": limit}}]})
            return
        await super().handle_subscribe(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        sink = OperationSink(self, operation)
        token = _SINK.set(sink)  # in the operation's own task
        try:
            await super().run_operation(operation)
        finally:
            _SINK.reset(token)
        if sink.feed is not None:
            await sink.serve()


class LegacyWS(BaseGraphQLWSHandler[Context, None]):
    """strawberry's handler of the legacy graphql-ws protocol (subscriptions-transport-ws),
    with the same admission: a refused connection gets `connection_error` with the reason,
    then the close code 1013."""

    async def handle_connection_init(self, message: LegacyConnectionInit) -> None:
        try:
            await super().handle_connection_init(message)
        except ConnectionThrottled as refused:
            await self.send_message({"type": "connection_error",
                                     "payload": {"message": refused.reason}})
            await self.websocket.close(code=TRY_AGAIN_LATER, reason=refused.reason)
