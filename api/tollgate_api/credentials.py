"""Every credential resolved before execution: bearer tokens and partner API keys.

`Authorization: Bearer <JWT>` is the `TokenVerifier`'s. A partner's API key comes as
`Authorization: ApiKey <key>` or `X-Api-Key: <key>` and is looked up by its SHA-256 in
PostgreSQL (`partner_keys.authenticate`: nothing else of the key is stored), so an unknown or
revoked key is refused at the door like a bad token (HTTP 401, websocket connection
rejected) and resolvers only ever see resolved principals.
"""

from __future__ import annotations

from tollgate_api.auth import Principal, TokenVerifier, Unauthenticated, resolve
from tollgate_core.store.db import Pool

API_KEY_HEADER = "x-api-key"
CHALLENGES = 'Bearer realm="tollgate", ApiKey realm="tollgate"'
"""`WWW-Authenticate` of a 401: the two schemes this API accepts."""


class Credentials:
    """Checks a request's credential; `pool` is set once the app's lifespan opened it."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier
        self.pool: Pool | None = None

    async def authenticate(self, authorization: str | None,
                           api_key: str | None = None) -> Principal:
        """The caller, or Unauthenticated saying why not."""
        if api_key is not None:
            if authorization:
                raise Unauthenticated("send one credential: Authorization or X-Api-Key")
            if not api_key.strip():
                raise Unauthenticated("empty API key")
            authorization = f"ApiKey {api_key.strip()}"
        principal = await self.verifier.authenticate(authorization)
        if not principal.unresolved:
            return principal
        if self.pool is None:
            raise Unauthenticated("API keys cannot be checked yet")
        resolved = await resolve(principal, self.pool)
        if resolved is None:
            raise Unauthenticated("unknown or revoked API key")
        return resolved
