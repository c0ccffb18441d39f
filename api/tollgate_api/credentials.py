"""Every credential resolved before execution: bearer tokens and partner API keys.

`Authorization: Bearer <JWT>` is the `TokenVerifier`'s. A partner's API key comes as
`Authorization: ApiKey <key>` or `X-Api-Key: <key>` and is looked up by its SHA-256 in
PostgreSQL (`partner_keys.authenticate`: nothing else of the key is stored), so an unknown or
revoked key is refused at the door like a bad token (HTTP 401, websocket connection
rejected) and resolvers only ever see resolved principals.

Tokens of the platform's own issuer (HS256, shared secret) are verified once and remembered
by their SHA-256 until they expire (at most `VERIFIED_TTL_S`): their validity depends on
nothing but the secret and the time, so a repeat needs no signature check and no claims
parsing. Tenant issuers' tokens (RS256/ES256) are verified every time: a key their issuer
retires must refuse its tokens as soon as the key set is fetched again (ADR 0014). Failures
are never remembered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable

import jwt

from tollgate_api.auth import Principal, TokenVerifier, Unauthenticated, resolve
from tollgate_core.store.db import Pool

API_KEY_HEADER = "x-api-key"
CHALLENGES = 'Bearer realm="tollgate", ApiKey realm="tollgate"'
"""`WWW-Authenticate` of a 401: the two schemes this API accepts."""

VERIFIED_TTL_S = 300.0
VERIFIED_MAX = 10_000
"""Verified platform tokens remembered at once (the oldest are forgotten first)."""


def _platform_token(authorization: str) -> str | None:
    """The token of `Bearer <HS256 JWT>`, else None (other schemes, other algorithms, or
    anything unreadable: the verifier has the last word on those)."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or token.count(".") != 2:
        return None
    header = token.split(".", 1)[0]
    try:
        alg = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("alg")
    except (ValueError, AttributeError):
        return None
    return token if alg == "HS256" else None


class Credentials:
    """Checks a request's credential; `pool` is set once the app's lifespan opened it."""

    def __init__(self, verifier: TokenVerifier,
                 clock: Callable[[], float] = time.time) -> None:
        self.verifier = verifier
        self.pool: Pool | None = None
        self._clock = clock
        self._verified: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()

    async def authenticate(self, authorization: str | None,
                           api_key: str | None = None) -> Principal:
        """The caller, or Unauthenticated saying why not."""
        if api_key is not None:
            if authorization:
                raise Unauthenticated("send one credential: Authorization or X-Api-Key")
            if not api_key.strip():
                raise Unauthenticated("empty API key")
            authorization = f"ApiKey {api_key.strip()}"
        token = _platform_token(authorization) if authorization else None
        if token is not None:
            digest = hashlib.sha256(token.encode()).digest()
            known = self._verified.get(digest)
            if known is not None:
                if self._clock() < known[0]:
                    return known[1]
                del self._verified[digest]
        principal = await self.verifier.authenticate(authorization)
        if token is not None:
            self._remember(digest, token, principal)
        if not principal.unresolved:
            return principal
        if self.pool is None:
            raise Unauthenticated("API keys cannot be checked yet")
        resolved = await resolve(principal, self.pool)
        if resolved is None:
            raise Unauthenticated("unknown or revoked API key")
        return resolved

    def _remember(self, digest: bytes, token: str, principal: Principal) -> None:
        """A verified token, until its `exp` (which the verifier required) or the TTL."""
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        now = self._clock()
        if not isinstance(exp, int | float) or exp <= now:
            return
        while len(self._verified) >= VERIFIED_MAX:
            self._verified.popitem(last=False)
        self._verified[digest] = (min(float(exp), now + VERIFIED_TTL_S), principal)
