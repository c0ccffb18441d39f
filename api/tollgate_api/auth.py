"""Bearer JWT authentication: the tenant always comes from the credential."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

ROLES = frozenset({"customer", "agent", "partner", "admin"})


class Unauthenticated(Exception):
    """Missing or invalid credential."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    subject: str
    roles: frozenset[str]

    @property
    def is_staff(self) -> bool:
        return bool(self.roles & {"agent", "admin"})


class TokenVerifier:
    """Verifies HS256 tokens of one issuer (local mode); OIDC issuers come with issue #5."""

    def __init__(self, secret: str, issuer: str) -> None:
        self._secret = secret
        self._issuer = issuer

    def verify(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthenticated("missing bearer token")
        token = authorization.split(" ", 1)[1].strip()
        try:
            claims = jwt.decode(token, self._secret, algorithms=["HS256"], issuer=self._issuer,
                                options={"require": ["exp", "iss", "sub", "tenant"]})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        roles = frozenset(str(r) for r in claims.get("roles", [])) & ROLES
        return Principal(str(claims["tenant"]), str(claims["sub"]), roles)

    def mint(self, tenant: str, subject: str, roles: list[str],
             lifetime: timedelta = timedelta(days=30)) -> str:
        now = datetime.now(UTC)
        claims = {"iss": self._issuer, "sub": subject, "tenant": tenant, "roles": roles,
                  "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, self._secret, algorithm="HS256")
