"""Per-request context: who is calling and the handles resolvers use."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from graphql import GraphQLError

from tollgate_api.admission import Connection
from tollgate_api.auth import Principal
from tollgate_api.live import EventHub
from tollgate_api.loaders import Loaders
from tollgate_core.domain.errors import Forbidden
from tollgate_core.store.db import Pool


@dataclass
class Context:
    pool: Pool
    hub: EventHub
    caller: Principal | None = None
    """Set from the credential before execution: by the HTTP endpoint, or from
    `connection_init` on a websocket (API keys already looked up in both)."""
    connection_params: dict[str, Any] = field(default_factory=dict)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    """The time metered calls are counted at (tests step it instead of sleeping)."""
    connection: Connection | None = None
    """A websocket connection's admission state (None over HTTP)."""

    @property
    def principal(self) -> Principal:
        if self.caller is None or self.caller.unresolved:
            raise GraphQLError("the credential is not valid",
                               extensions={"code": "UNAUTHENTICATED"})
        return self.caller

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    @cached_property
    def loaders(self) -> Loaders:
        """DataLoaders of this request (a websocket connection: of its operations)."""
        return Loaders(self.pool, self.tenant)

    def forget_reads(self) -> None:
        """After a change: reads later in the request (or operation) see it. At the end of
        an operation: its reads' transaction ends."""
        loaders: Loaders | None = self.__dict__.pop("loaders", None)
        if loaders is not None:
            loaders.waves.release()

    def customer_scope(self) -> uuid.UUID | None:
        """The one customer the caller may see, or None for the whole tenant (agents, admins).

        Partners and other roles see no customer at all.
        """
        principal = self.principal
        if principal.is_staff:
            return None
        if "customer" in principal.roles:
            try:
                return uuid.UUID(principal.subject)
            except ValueError:
                pass
        raise Forbidden("this credential may not see customers")

    def check_customer(self, customer_id: uuid.UUID) -> None:
        """A customer sees only themself; agents and admins see their tenant."""
        scope = self.customer_scope()
        if scope is not None and scope != customer_id:
            raise Forbidden("not allowed to see this customer", field="id")

    def check_staff(self) -> None:
        if not self.principal.is_staff:
            raise Forbidden("this operation needs the agent or admin role")
