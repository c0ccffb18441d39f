"""The token issuers of tenants: their public keys (JWK Sets, RFC 7517) and where to find them.

A Tenant declares `spec.api.auth`: the issuer (`iss`), an optional audience, and its keys,
inline (`jwks`) or at an HTTPS URL (`jwksUri`). This module loads those keys:

- Only signature keys for the allowed algorithms are kept: RSA (≥ 2048 bits) for RS256 and
  EC P-256 for ES256. Symmetric (`oct`) keys, keys published with private members, keys for
  other uses or algorithms are skipped, so a JWK Set can never enable HS256 or `none`.
- A remote set is fetched with a timeout and a size limit, without redirects, and kept for
  the response's `Cache-Control: max-age` (clamped to 1 min … 1 day; 5 min without one).
  A token naming an unknown `kid` fetches it again at once (a rotated key is picked up without
  a restart), within a small budget so random `kid`s cannot turn the API into a load
  generator for the issuer. When a fetch fails, the last keys stay in use for a day.
- The tenant's `auth` is read from its own row (row-level security: the transaction is
  bound to the tenant the token claims) and kept for `spec_ttl_s`, so a changed Tenant takes
  effect within that time without a restart.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK
from jwt.exceptions import PyJWKError
from pydantic import ValidationError

from tollgate_core.resources.tenant import JWKS_URI_PATTERN, ApiAuthSpec
from tollgate_core.store.db import Pool, tenant_tx

log = structlog.get_logger(__name__)

ALGORITHMS = ("RS256", "ES256")
"""What a tenant issuer may sign with. HS256 is only the platform's own local secret."""
RSA_MIN_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

FETCH_TIMEOUT_S = 5.0
FETCH_MAX_BYTES = 256 * 1024
MAX_AGE_DEFAULT_S = 300.0
MAX_AGE_MIN_S = 60.0
MAX_AGE_MAX_S = 86_400.0
STALE_FOR_S = 86_400.0
"""How long the last fetched keys stay in use while the issuer cannot be reached."""
RETRY_AFTER_FAILURE_S = 5.0
"""After a failed fetch, requests use what is there (or fail fast) for this long."""
UNKNOWN_KID_BURST = 5
UNKNOWN_KID_REFILL_S = 30.0
"""Fetches triggered by unknown `kid`s: a burst of 5, then one per 30 s per key set."""


class JwksError(Exception):
    """A key set that cannot be loaded or fetched; the message says why."""


class UnknownKey(Exception):
    """No key of the set fits the token's `kid` and algorithm."""


def _describe(kid: str | None, alg: str) -> str:
    return f"kid {kid!r}" if kid is not None else f"no kid ({alg})"


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable keys of one JWK Set, by `kid`; `skipped` says which keys were left out."""

    keys: tuple[PyJWK, ...]
    skipped: tuple[str, ...] = ()

    @classmethod
    def parse(cls, document: str | bytes) -> KeySet:
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise JwksError(f"the JWK Set is not JSON: {exc}") from exc
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise JwksError('the JWK Set has no "keys" list')
        keys: list[PyJWK] = []
        skipped: list[str] = []
        seen: set[str | None] = set()
        for index, entry in enumerate(entries):
            try:
                key = _signing_key(entry)
            except JwksError as exc:
                skipped.append(f"keys[{index}]: {exc}")
                continue
            if key.key_id in seen:
                skipped.append(f"keys[{index}]: kid {key.key_id!r} appears twice")
                continue
            seen.add(key.key_id)
            keys.append(key)
        if not keys:
            reasons = "; ".join(skipped) or "the set is empty"
            raise JwksError(f"the JWK Set has no usable RS256/ES256 key ({reasons})")
        return cls(tuple(keys), tuple(skipped))

    def find(self, kid: str | None, alg: str) -> PyJWK:
        """The key for a token's `kid` (or the one key of its algorithm when it names none).

        UnknownKey: none fits (a remote set may be fetched again); JwksError: the key exists
        but cannot verify this token."""
        if kid is not None:
            key = next((k for k in self.keys if k.key_id == kid), None)
            if key is None:
                raise UnknownKey(f"the issuer's key set has no key with kid {kid!r}")
            if key.algorithm_name != alg:
                raise JwksError(f"key {kid!r} is an {key.algorithm_name} key but the token's "
                                f"alg is {alg}")
            return key
        fitting = [k for k in self.keys if k.algorithm_name == alg]
        if not fitting:
            raise UnknownKey(f"the issuer's key set has no {alg} key")
        if len(fitting) > 1:
            raise JwksError(f"the token names no kid and the issuer's key set has "
                            f"{len(fitting)} {alg} keys")
        return fitting[0]


def _signing_key(entry: Any) -> PyJWK:
    if not isinstance(entry, dict):
        raise JwksError("not a JSON object")
    kty, crv, alg = entry.get("kty"), entry.get("crv"), entry.get("alg")
    if _PRIVATE_MEMBERS & entry.keys():
        raise JwksError("carries private or symmetric key material")
    if entry.get("use", "sig") != "sig":
        raise JwksError(f"use {entry.get('use')!r} is not sig")
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise JwksError("key_ops does not allow verify")
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and crv == "P-256":
        algorithm = "ES256"
    else:
        raise JwksError(f"kty {kty!r}{f' crv {crv!r}' if crv else ''} is not accepted "
                        "(RSA for RS256, EC P-256 for ES256)")
    if alg is not None and alg != algorithm:
        raise JwksError(f"alg {alg!r} is not accepted for kty {kty!r} (only {algorithm})")
    try:
        key = PyJWK(entry, algorithm)
    except (PyJWKError, ValueError, TypeError, KeyError) as exc:
        raise JwksError(f"not a valid {kty} key: {exc}") from exc
    if isinstance(key.key, RSAPublicKey) and key.key.key_size < RSA_MIN_BITS:
        raise JwksError(f"RSA key of {key.key.key_size} bits (at least {RSA_MIN_BITS})")
    return key


class KeySource(Protocol):
    async def key(self, kid: str | None, alg: str) -> PyJWK:
        """The verification key, or raise UnknownKey / JwksError."""
        ...


@dataclass(frozen=True, slots=True)
class InlineKeys:
    """`spec.api.auth.jwks`: keys in the Tenant itself."""

    keys: KeySet

    async def key(self, kid: str | None, alg: str) -> PyJWK:
        return self.keys.find(kid, alg)


# --------------------------------------------------------------------------- fetching


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes
    max_age_s: float


Fetch = Callable[[str], Awaitable[Fetched]]
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


def max_age(cache_control: str | None) -> float:
    """How long to keep a fetched set: `max-age` clamped to 1 min … 1 day, else 5 min."""
    if not cache_control:
        return MAX_AGE_DEFAULT_S
    if re.search(r"no-store|no-cache", cache_control, re.IGNORECASE):
        return MAX_AGE_MIN_S
    found = _MAX_AGE.search(cache_control)
    seconds = float(found.group(1)) if found else MAX_AGE_DEFAULT_S
    return min(max(seconds, MAX_AGE_MIN_S), MAX_AGE_MAX_S)


def https_fetcher(*, timeout_s: float = FETCH_TIMEOUT_S, max_bytes: int = FETCH_MAX_BYTES,
                  tls: ssl.SSLContext | None = None) -> Fetch:
    """GET a JWK Set: https (plain http to loopback only), no redirects, no proxies from the
    environment, at most `max_bytes`, everything within `timeout_s`. `tls`: the trust to use
    instead of the system's (tests, private CAs)."""

    async def fetch(uri: str) -> Fetched:
        if not re.match(JWKS_URI_PATTERN, uri):
            raise JwksError(f"{uri!r} is not an https URL (plain http only to loopback)")
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session, \
                    session.get(uri, allow_redirects=False, ssl=tls if tls is not None else True,
                                headers={"Accept": "application/jwk-set+json, "
                                                   "application/json"}) as response:
                if response.status != 200:
                    raise JwksError(f"{uri} answered HTTP {response.status}")
                if (response.content_length or 0) > max_bytes:
                    raise JwksError(f"{uri} sent {response.content_length} bytes "
                                    f"(at most {max_bytes})")
                body = bytearray()
                async for chunk in response.content.iter_chunked(16_384):
                    body += chunk
                    if len(body) > max_bytes:
                        raise JwksError(f"{uri} sent more than {max_bytes} bytes")
                return Fetched(bytes(body), max_age(response.headers.get("Cache-Control")))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JwksError(f"fetching {uri} failed: {type(exc).__name__}: {exc}") from exc

    return fetch


class RemoteKeys:
    """`spec.api.auth.jwksUri`: keys fetched when first needed, kept for their max-age,
    fetched again for an unknown `kid` (within a budget), kept for a day when the issuer
    cannot be reached. Concurrent requests share one fetch."""

    def __init__(self, uri: str, fetch: Fetch,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.uri = uri
        self._fetch = fetch
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: KeySet | None = None
        self._generation = 0
        self._fetched_at = 0.0
        self._fresh_until = 0.0
        self._retry_at = 0.0
        self._failure: str | None = None
        self._budget = float(UNKNOWN_KID_BURST)
        self._budget_at = clock()

    async def key(self, kid: str | None, alg: str) -> PyJWK:
        now = self._clock()
        if self._keys is None or now >= self._fresh_until:
            await self._refresh(self._generation)
        keys, seen = self._keys, self._generation
        assert keys is not None  # _refresh returns keys or raises
        try:
            return keys.find(kid, alg)
        except UnknownKey:
            keys = await self._refresh(seen, unknown=_describe(kid, alg))
            return keys.find(kid, alg)

    def _take_budget(self, now: float) -> bool:
        self._budget = min(float(UNKNOWN_KID_BURST),
                           self._budget + (now - self._budget_at) / UNKNOWN_KID_REFILL_S)
        self._budget_at = now
        if self._budget < 1:
            return False
        self._budget -= 1
        return True

    async def _refresh(self, seen: int, unknown: str | None = None) -> KeySet:
        """Fetch the set unless another request did since generation `seen`; `unknown`: the
        key a token asked for that the set did not have (such fetches have a budget)."""
        async with self._lock:
            now = self._clock()
            if self._generation != seen and self._keys is not None:
                return self._keys  # another request fetched while this one waited
            if unknown is not None and not self._take_budget(now):
                raise UnknownKey(f"the issuer's key set has no key for {unknown} (and was "
                                 "fetched again too often lately to look once more)")
            if now < self._retry_at:  # the last fetch failed moments ago
                return self._stale_or_raise(now)
            try:
                fetched = await self._fetch(self.uri)
                keys = KeySet.parse(fetched.body)
            except JwksError as exc:
                self._failure = str(exc)
                self._retry_at = now + RETRY_AFTER_FAILURE_S
                log.warning("jwks.fetch_failed", uri=self.uri, error=str(exc))
                return self._stale_or_raise(now)
            if keys.skipped:
                log.info("jwks.keys_skipped", uri=self.uri, skipped=list(keys.skipped))
            self._keys, self._failure = keys, None
            self._generation += 1
            self._fetched_at = now
            self._fresh_until = now + fetched.max_age_s
            log.info("jwks.fetched", uri=self.uri, keys=len(keys.keys), unknown_kid=unknown)
            return keys

    def _stale_or_raise(self, now: float) -> KeySet:
        if self._keys is not None and now - self._fetched_at < STALE_FOR_S:
            return self._keys
        raise JwksError(f"the issuer's key set is not available: {self._failure}")


# --------------------------------------------------------------------------- tenants


@dataclass(frozen=True, slots=True)
class TenantIssuer:
    """What a tenant accepts: tokens of `issuer` (for `audience`, when set) signed by `keys`."""

    auth: ApiAuthSpec
    keys: KeySource

    @property
    def issuer(self) -> str:
        return self.auth.issuer

    @property
    def audience(self) -> str | None:
        return self.auth.audience


@dataclass(slots=True)
class _Entry:
    issuer: TenantIssuer | None
    error: str | None
    expires: float


class TenantIssuers:
    """Each tenant's issuer, read from its Tenant spec (as stored by the operator or
    `tollgate apply`), kept for `spec_ttl_s`; remote key sets are shared by URL."""

    def __init__(self, pool: Pool, *, fetch: Fetch | None = None, spec_ttl_s: float = 30.0,
                 max_tenants: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._fetch = fetch or https_fetcher()
        self._ttl = spec_ttl_s
        self._max = max_tenants
        self._clock = clock
        self._tenants: OrderedDict[str, _Entry] = OrderedDict()
        self._remote: dict[str, RemoteKeys] = {}

    async def of(self, tenant: str) -> TenantIssuer | None:
        """The tenant's issuer; None when the tenant does not exist or declares none.
        JwksError when its `auth` cannot be used (e.g. inline keys of which none fits)."""
        now = self._clock()
        entry = self._tenants.get(tenant)
        if entry is None or now >= entry.expires:
            entry = await self._load(tenant, entry, now)
            self._tenants[tenant] = entry
            self._tenants.move_to_end(tenant)
            while len(self._tenants) > self._max:
                self._tenants.popitem(last=False)
        if entry.error is not None:
            raise JwksError(entry.error)
        return entry.issuer

    async def _load(self, tenant: str, previous: _Entry | None, now: float) -> _Entry:
        expires = now + self._ttl
        async with tenant_tx(self._pool, tenant, readonly=True) as conn:
            raw = await conn.fetchval(
                "SELECT spec->'api'->'auth' FROM tenants WHERE tenant_id = $1", tenant)
        if raw is None:
            return _Entry(None, None, expires)
        try:
            auth = ApiAuthSpec.model_validate(raw)
        except ValidationError as exc:
            return _Entry(None, f"the tenant's api.auth is not valid: {exc}", expires)
        if previous is not None and previous.issuer is not None and previous.issuer.auth == auth:
            return _Entry(previous.issuer, None, expires)  # unchanged: keep the loaded keys
        if auth.jwks is not None:
            try:
                keys: KeySource = InlineKeys(KeySet.parse(auth.jwks))
            except JwksError as exc:
                return _Entry(None, f"the tenant's api.auth.jwks: {exc}", expires)
        else:
            assert auth.jwks_uri is not None  # exactly one of the two, by the model
            keys = self._remote.get(auth.jwks_uri) or self._remote.setdefault(
                auth.jwks_uri, RemoteKeys(auth.jwks_uri, self._fetch, self._clock))
        return _Entry(TenantIssuer(auth, keys), None, expires)
