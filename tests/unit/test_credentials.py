"""Verified platform tokens are remembered until they expire; tenant issuers' tokens, API keys
and failures never are."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest

from tollgate_api.auth import Principal, TokenVerifier, Unauthenticated
from tollgate_api.credentials import VERIFIED_TTL_S, Credentials

SECRET = "a-test-secret-of-at-least-32-bytes!!"
ISSUER = "tollgate-dev"


class Counting(TokenVerifier):
    def __init__(self) -> None:
        super().__init__(SECRET, ISSUER)
        self.calls = 0

    async def authenticate(self, authorization: str | None) -> Principal:
        self.calls += 1
        return await super().authenticate(authorization)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def exp_of(token: str) -> float:
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


async def test_a_platform_token_is_verified_once_until_it_expires() -> None:
    verifier = Counting()
    token = verifier.mint("acme", "agent-1", ["agent"], lifetime=timedelta(seconds=60))
    exp = exp_of(token)
    clock = Clock(exp - 60)
    credentials = Credentials(verifier, clock)

    first = await credentials.authenticate(f"Bearer {token}")
    assert first == Principal("acme", "agent-1", frozenset({"agent"}))
    for _ in range(3):
        assert await credentials.authenticate(f"bearer  {token} ") == first
    assert verifier.calls == 1

    clock.now = exp  # its exp: forgotten, so verified again (the verifier decides)
    assert await credentials.authenticate(f"Bearer {token}") == first
    assert verifier.calls == 2


async def test_remembered_at_most_the_ttl() -> None:
    verifier = Counting()
    token = verifier.mint("acme", "agent-1", ["agent"], lifetime=timedelta(days=1))
    clock = Clock(exp_of(token) - 86_400)
    credentials = Credentials(verifier, clock)
    await credentials.authenticate(f"Bearer {token}")
    clock.now += VERIFIED_TTL_S
    await credentials.authenticate(f"Bearer {token}")
    assert verifier.calls == 2


async def test_failures_and_other_credentials_are_not_remembered() -> None:
    verifier = Counting()
    credentials = Credentials(verifier)
    forged = TokenVerifier("another-secret-of-at-least-32-bytes!", ISSUER).mint(
        "acme", "agent-1", ["agent"])
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="signature"):
            await credentials.authenticate(f"Bearer {forged}")
    assert verifier.calls == 2

    # A tenant issuer's algorithm: verified every time (its keys may be retired).
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"k1"}').decode().rstrip("=")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await credentials.authenticate(f"Bearer {header}.e30.c2ln")
    assert verifier.calls == 4

    # API keys are looked up every time (a revoked key is refused at once).
    with pytest.raises(Unauthenticated, match="cannot be checked yet"):
        await credentials.authenticate(None, "some-key")
    assert verifier.calls == 5
