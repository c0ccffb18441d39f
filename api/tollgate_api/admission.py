"""Websocket admission: connections are rate limited per credential like HTTP requests, and
a credential holds a bounded number of them open (ADR 0009).

A graphql-transport-ws client sends its credential in `connection_init`, after the
handshake, so admission happens there: the credential is checked, then one token is taken
from the caller's bucket — the same `RateLimiter` and key as its HTTP requests (a connection
costs one request), an invalid credential counting against its client address as on HTTP —
and then one of the credential's connection slots in this process. A refusal closes the
connection with code 1013 "Try Again Later" (RFC 6455 / IANA) and a reason starting with
`RATE_LIMITED` or `TOO_MANY_CONNECTIONS`: not 4429, which graphql-transport-ws reserves for a
second `connection_init` and which graphql-ws clients treat as fatal; 1013 is retried by them
with their back-off. The slot is given back when the connection ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from prometheus_client import Counter

from tollgate_api.auth import Principal
from tollgate_api.ratelimit import RateLimiter

TRY_AGAIN_LATER = 1013
"""RFC 6455 close code (IANA registry): the server refuses for now; retry later."""

WS_REFUSED = Counter("tollgate_api_ws_refused_total",
                     "Websocket connections and operations refused by the per-credential "
                     "limits", ["reason"])


class ConnectionThrottled(Exception):
    """A connection refused for now: closed with TRY_AGAIN_LATER and `reason`."""

    def __init__(self, code: str, detail: str) -> None:
        self.reason = f"{code}: {detail}"
        super().__init__(self.reason)
        if len(self.reason.encode()) > 123:  # the most a close frame's reason may carry
            raise ValueError("a close reason must fit in 123 bytes")


@dataclass(slots=True)
class Connection:
    """One websocket connection as admission sees it."""

    peer: str
    """The client address uvicorn saw (anonymous callers are limited by it)."""
    slot: Hashable | None = None
    """The credential key whose connection slot this connection holds, if any."""


def caller_key(principal: Principal | None, peer: str) -> tuple[str, ...]:
    """The rate-limit key of HTTP requests (`GraphQLHTTP._authenticate`), for the same caller."""
    if principal is not None:
        return ("credential", principal.tenant, principal.subject)
    return ("address", peer)


class Admission:
    """Per API process: the shared rate limiter and the open connections per credential."""

    def __init__(self, limiter: RateLimiter | None, connections_per_credential: int) -> None:
        if connections_per_credential < 0:
            raise ValueError("connections_per_credential must be ≥ 0 (0: no cap)")
        self.limiter = limiter
        self.cap = connections_per_credential
        self._open: dict[Hashable, int] = {}

    def open_connections(self, principal: Principal) -> int:
        return self._open.get(caller_key(principal, ""), 0)

    def admit(self, connection: Connection, principal: Principal | None) -> None:
        """Take a token for this `connection_init` and, for a valid credential, a connection
        slot; ConnectionThrottled when either is refused. A connection initialised again
        (the legacy graphql-ws protocol allows it) first gives its slot back."""
        self.release(connection)
        key = caller_key(principal, connection.peer)
        if self.limiter is not None:
            verdict = self.limiter.take(key)
            if not verdict.allowed:
                WS_REFUSED.labels("rateLimited").inc()
                raise ConnectionThrottled(
                    "RATE_LIMITED", f"{self.limiter.per_second:g} connections or requests/s, "
                    f"burst {self.limiter.burst}; retry after {verdict.retry_after_s} s")
        if principal is None:
            return
        held = self._open.get(key, 0)
        if self.cap and held >= self.cap:
            WS_REFUSED.labels("tooManyConnections").inc()
            raise ConnectionThrottled(
                "TOO_MANY_CONNECTIONS", f"at most {self.cap} open per credential; close one")
        self._open[key] = held + 1
        connection.slot = key

    def release(self, connection: Connection) -> None:
        """Give the connection's slot back (idempotent)."""
        key, connection.slot = connection.slot, None
        if key is None:
            return
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
