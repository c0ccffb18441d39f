"""Websocket admission (ADR 0009), pure: one token of the caller's bucket per
`connection_init`, a bounded number of open connections per credential, slots given back."""

from __future__ import annotations

import pytest

from tollgate_api.admission import Admission, Connection, ConnectionThrottled
from tollgate_api.auth import Principal
from tollgate_api.ratelimit import RateLimiter

ALICE = Principal("de", "alice", frozenset({"customer"}))
BOB = Principal("de", "bob", frozenset({"customer"}))


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_connection_takes_a_token_of_the_same_bucket_as_requests() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 2, clock)
    admission = Admission(limiter, 0)
    admission.admit(Connection("10.0.0.1"), ALICE)
    assert limiter.take(("credential", "de", "alice")).allowed  # the HTTP key: 2nd token
    with pytest.raises(ConnectionThrottled) as refused:
        admission.admit(Connection("10.0.0.1"), ALICE)
    assert refused.value.reason == ("RATE_LIMITED: 1 connections or requests/s, burst 2; "
                                    "retry after 1 s")
    admission.admit(Connection("10.0.0.1"), BOB)  # another credential, its own bucket
    clock.now = 1.0
    admission.admit(Connection("10.0.0.1"), ALICE)  # a token came back
    # Invalid credentials are counted by address, and hold no slot.
    anonymous = Connection("10.0.0.9")
    admission.admit(anonymous, None)
    assert anonymous.slot is None


def test_open_connections_are_capped_per_credential_and_given_back() -> None:
    admission = Admission(None, 2)
    first, second, third = Connection("a"), Connection("a"), Connection("a")
    admission.admit(first, ALICE)
    admission.admit(second, ALICE)
    with pytest.raises(ConnectionThrottled, match=r"^TOO_MANY_CONNECTIONS: at most 2 open"):
        admission.admit(third, ALICE)
    assert third.slot is None and admission.open_connections(ALICE) == 2
    admission.admit(Connection("a"), BOB)
    admission.release(first)
    admission.release(first)  # idempotent
    assert admission.open_connections(ALICE) == 1
    admission.admit(third, ALICE)
    # A connection initialised again (legacy protocol) keeps one slot, not two.
    admission.admit(third, ALICE)
    assert admission.open_connections(ALICE) == 2
    for connection in (second, third):
        admission.release(connection)
    assert admission.open_connections(ALICE) == 0


def test_no_cap_and_no_limiter_admit_everyone() -> None:
    admission = Admission(None, 0)
    connections = [Connection("a") for _ in range(1000)]
    for connection in connections:
        admission.admit(connection, ALICE)
    assert admission.open_connections(ALICE) == 1000
    with pytest.raises(ValueError, match=r"≥ 0"):
        Admission(None, -1)
