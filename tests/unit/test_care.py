"""Customer care values: when a bill cycle ends, what a pseudonym and a key digest are."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from tollgate_cli.localstate import save_partner_keys
from tollgate_core.domain.care import (
    api_key_digest,
    bill_cycle_end,
    is_pseudonym,
    new_api_key,
    pseudonym,
    pseudonymous_email,
)

BERLIN = ZoneInfo("Europe/Berlin")


def test_the_cycle_ends_at_the_next_local_midnight_of_the_cycle_day() -> None:
    # Mid-cycle: the 15th of this month.
    assert bill_cycle_end(datetime(2026, 3, 10, 12, tzinfo=UTC), 15, "Europe/Berlin") == (
        datetime(2026, 3, 15, tzinfo=BERLIN))
    # On the cycle day after midnight: next month's.
    assert bill_cycle_end(datetime(2026, 3, 15, 0, 30, tzinfo=BERLIN), 15, "Europe/Berlin") == (
        datetime(2026, 4, 15, tzinfo=BERLIN))
    # Exactly at the cycle start: that cycle is under way, so the next one.
    assert bill_cycle_end(datetime(2026, 4, 1, tzinfo=BERLIN), 1, "Europe/Berlin") == (
        datetime(2026, 5, 1, tzinfo=BERLIN))
    # December rolls into January; 23:30 UTC on 31 Dec is already 1 Jan in Berlin.
    assert bill_cycle_end(datetime(2026, 12, 20, tzinfo=UTC), 1, "Europe/Berlin") == (
        datetime(2027, 1, 1, tzinfo=BERLIN))
    assert bill_cycle_end(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), 1, "Europe/Berlin") == (
        datetime(2027, 2, 1, tzinfo=BERLIN))


def test_pseudonyms_are_random_and_recognisable() -> None:
    names = {pseudonym() for _ in range(100)}
    assert len(names) == 100 and all(is_pseudonym(n) for n in names)
    assert not is_pseudonym("491701234567")
    email = pseudonymous_email()
    assert email.endswith("@erased.invalid") and is_pseudonym(email)


def test_only_the_sha256_of_a_key_is_what_is_stored() -> None:
    key = new_api_key()
    assert len(key) >= 43 and key != new_api_key()
    assert api_key_digest(key) == hashlib.sha256(key.encode()).hexdigest()


def test_local_mode_keeps_an_issued_key_readable_only_by_its_owner(tmp_path: Path) -> None:
    written = save_partner_keys(tmp_path, {"de": {"streamflix": "k1"}})
    assert written == [tmp_path / "partner-keys" / "de-streamflix"]
    assert written[0].read_text() == "k1"
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o600
    assert save_partner_keys(tmp_path, {}) == []
