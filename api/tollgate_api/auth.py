"""Authentication: the tenant always comes from the credential.

- `Authorization: Bearer <JWT>`: tenant, subject and roles are claims. HS256 tokens of the
  platform's own issuer (local mode, tests), or RS256/ES256 tokens of the issuer the claimed
  tenant declares in its spec (`spec.api.auth`, ADR 0014; keys in `tollgate_api.jwks`).
- `Authorization: ApiKey <key>` (or `X-Api-Key`): a partner's API key. Checking it needs the
  database (only the key's SHA-256 is stored, with its tenant and agreement), so
  `TokenVerifier.authenticate` returns an unresolved principal carrying the digest.
  `tollgate_api.credentials.Credentials` resolves it with `resolve` before anything runs —
  in the HTTP endpoint before execution, in `connection_init` for a websocket (ADR 0015) —
  and refuses an unknown or revoked key there (401, or the websocket closed with 4403), so
  resolvers and the rate limits only ever see resolved principals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from jwt.types import Options

from tollgate_api.jwks import ALGORITHMS, Fetch, JwksError, TenantIssuers, UnknownKey
from tollgate_core.domain.care import api_key_digest
from tollgate_core.store import partner_keys
from tollgate_core.store.db import Pool

ROLES = frozenset({"customer", "agent", "partner", "admin"})


class Unauthenticated(Exception):
    """Missing or invalid credential."""


PARTNER_PREFIX = "partner:"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    subject: str
    roles: frozenset[str]
    api_key_digest: str | None = None
    """Set (with no tenant and no roles) while an API key awaits its database lookup in
    `Credentials.authenticate`."""

    @property
    def is_staff(self) -> bool:
        return bool(self.roles & {"agent", "admin"})

    @property
    def unresolved(self) -> bool:
        return self.api_key_digest is not None and not self.tenant

    @property
    def agreement(self) -> str | None:
        """The PartnerAgreement a partner credential stands for (subject `partner:<name>`)."""
        if "partner" in self.roles and self.subject.startswith(PARTNER_PREFIX):
            return self.subject.removeprefix(PARTNER_PREFIX)
        return None

    @classmethod
    def partner(cls, tenant: str, agreement: str) -> Principal:
        return cls(tenant, PARTNER_PREFIX + agreement, frozenset({"partner"}))


async def resolve(principal: Principal, pool: Pool) -> Principal | None:
    """The principal with its API key looked up: the agreement's partner, None for a key
    that is unknown or revoked. Other principals are returned as they are."""
    if not principal.unresolved or principal.api_key_digest is None:
        return principal
    owner = await partner_keys.authenticate(pool, principal.api_key_digest)
    return None if owner is None else Principal.partner(owner.tenant, owner.agreement)


LEEWAY = timedelta(seconds=30)
"""Clock skew tolerated on `exp`, `nbf` and `iat` of tenant issuers' tokens."""
_TENANT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _claim_error(exc: jwt.PyJWTError, audience: str | None = None) -> str:
    """Which claim (or which part of the token) failed, in words."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the token has expired (exp)"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet (nbf)"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "the token was issued in the future (iat)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"the token has no {exc.claim!r} claim"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"the token's audience (aud) does not name {audience!r}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the token's issuer (iss) is not accepted"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "the token's signature does not verify"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return f"the token's algorithm (alg) is not accepted: {exc}"
    if isinstance(exc, jwt.DecodeError):
        return f"the token is malformed: {exc}"
    return f"invalid token: {exc}"


def _unverified(token: str) -> dict[str, Any]:
    """The claims before any check, only to choose how to check them."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Unauthenticated(_claim_error(exc)) from exc


def _roles(claims: dict[str, Any]) -> frozenset[str]:
    value = claims.get("roles", [])
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return frozenset(str(r) for r in items) & ROLES


class TokenVerifier:
    """Verifies credentials; the tenant always comes from the credential.

    - HS256 tokens of the platform's own issuer (`ApiSettings.jwt_issuer`), signed with the
      shared secret: local mode, tests and platform tooling.
    - RS256 / ES256 tokens of a tenant's issuer (Tenant `spec.api.auth`, ADR 0014): the
      `tenant` claim names the tenant, whose spec must declare the token's `iss`; the key is
      the one of that issuer's JWK Set with the token's `kid`. Needs `attach(pool)`.
    - `ApiKey` credentials: returned unresolved; `Credentials.authenticate` looks them up
      (`resolve`) before the request or connection goes any further.
    """

    def __init__(self, secret: str, issuer: str, issuers: TenantIssuers | None = None) -> None:
        self._secret = secret
        self._issuer = issuer
        self.issuers = issuers

    def attach(self, pool: Pool, fetch: Fetch | None = None) -> None:
        """Accept tenant issuers' tokens, reading Tenant specs through `pool` (the app's
        lifespan calls this once the pool is open)."""
        self.issuers = TenantIssuers(pool, fetch=fetch)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization` header value; Unauthenticated says why not."""
        token = self._bearer(authorization)
        if isinstance(token, Principal):
            return token
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(_claim_error(exc)) from exc
        alg = header.get("alg")
        if alg == "HS256":
            if _unverified(token).get("iss") != self._issuer:
                raise Unauthenticated("the token's algorithm (alg) HS256 is accepted only from "
                                      "the platform's own issuer; tenant issuers sign with "
                                      f"{' or '.join(ALGORITHMS)}")
            return self._verify_local(token)
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"the token's algorithm (alg) {alg!r} is not accepted: "
                                  f"{' or '.join(ALGORITHMS)} from a tenant's issuer")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's kid is not a string")
        return await self._verify_tenant_issued(token, str(alg), kid)

    @staticmethod
    def _bearer(authorization: str | None) -> str | Principal:
        """The bearer token, or the (unresolved) principal of an API key."""
        if authorization and authorization.lower().startswith("apikey "):
            key = authorization.split(" ", 1)[1].strip()
            if not key:
                raise Unauthenticated("empty API key")
            digest = api_key_digest(key)
            # The subject names the key without the key itself; once resolved the caller is
            # `partner:<agreement>` (its rate-limit key, ADR 0015).
            return Principal("", f"apikey:{digest[:16]}", frozenset(), digest)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthenticated("missing bearer token or API key")
        token = authorization.split(" ", 1)[1].strip()
        if not token:
            raise Unauthenticated("empty bearer token")
        return token

    def _verify_local(self, token: str) -> Principal:
        if not self._secret:
            raise Unauthenticated("HS256 tokens are not accepted here (no local secret)")
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=self._issuer,
                                options={"require": ["exp", "iss", "sub", "tenant"]})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(_claim_error(exc)) from exc
        return Principal(str(claims["tenant"]), str(claims["sub"]), _roles(claims))

    async def _verify_tenant_issued(self, token: str, alg: str, kid: str | None) -> Principal:
        # Unverified, only to find the tenant and its issuer; nothing else is believed yet.
        unverified = _unverified(token)
        issuer, tenant = unverified.get("iss"), unverified.get("tenant")
        if not isinstance(issuer, str) or not issuer:
            raise Unauthenticated("the token has no 'iss' claim")
        if not isinstance(tenant, str) or not tenant:
            raise Unauthenticated("the token has no 'tenant' claim")
        if not _TENANT.match(tenant):
            raise Unauthenticated(f"the token's tenant claim {tenant!r} is not a tenant name")
        if self.issuers is None:
            raise Unauthenticated("tokens of tenant issuers are not accepted here")
        try:
            declared = await self.issuers.of(tenant)
        except JwksError as exc:
            raise Unauthenticated(f"tenant {tenant!r} cannot verify tokens: {exc}") from exc
        # One message whether the tenant does not exist or declares another issuer.
        if declared is None or declared.issuer != issuer:
            raise Unauthenticated(f"the token's tenant {tenant!r} does not accept tokens of "
                                  f"issuer (iss) {issuer!r}")
        try:
            key = await declared.keys.key(kid, alg)
        except (UnknownKey, JwksError) as exc:
            raise Unauthenticated(f"no key to verify the token: {exc}") from exc
        options: Options = {"require": ["exp", "iss", "sub", "tenant"],
                            "verify_aud": declared.audience is not None,
                            "enforce_minimum_key_length": True}
        try:
            claims = jwt.decode(token, key, algorithms=[alg], issuer=declared.issuer,
                                audience=declared.audience, leeway=LEEWAY, options=options)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(_claim_error(exc, declared.audience)) from exc
        return Principal(tenant, str(claims["sub"]), _roles(claims))

    def mint(self, tenant: str, subject: str, roles: list[str],
             lifetime: timedelta = timedelta(days=30)) -> str:
        now = datetime.now(UTC)
        claims = {"iss": self._issuer, "sub": subject, "tenant": tenant, "roles": roles,
                  "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, self._secret, algorithm="HS256")
