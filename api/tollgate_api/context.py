"""Per-request context: who is calling and the handles resolvers use."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tollgate_api.auth import Principal
from tollgate_api.live import EventHub
from tollgate_core.domain.errors import Forbidden
from tollgate_core.store.db import Pool


@dataclass
class Context:
    pool: Pool
    hub: EventHub
    caller: Principal | None = None
    """Set from the bearer token (HTTP) or from `connection_init` (websocket)."""
    connection_params: dict[str, Any] = field(default_factory=dict)

    @property
    def principal(self) -> Principal:
        if self.caller is None:
            raise Forbidden("not authenticated")
        return self.caller

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def check_customer(self, customer_id: uuid.UUID) -> None:
        """A customer sees only themself; agents and admins see their tenant."""
        if self.principal.is_staff:
            return
        if "customer" in self.principal.roles and self.principal.subject == str(customer_id):
            return
        raise Forbidden("not allowed to see this customer", field="id")

    def check_staff(self) -> None:
        if not self.principal.is_staff:
            raise Forbidden("this operation needs the agent or admin role")
