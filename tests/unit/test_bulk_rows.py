"""Rows of bulk statements as one JSON parameter: exact values, refused types."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from fractions import Fraction

import pytest
from asyncpg.pgproto.pgproto import UUID as AsyncpgUUID

from tollgate_core.store.bulk import json_rows


def test_values_keep_their_exact_form() -> None:
    ours = uuid.UUID("0b0e6e2c-5b1c-4d8f-9c8e-8f2b5e2b1a11")
    theirs = AsyncpgUUID("1b0e6e2c-5b1c-4d8f-9c8e-8f2b5e2b1a11")  # as asyncpg returns ids
    berlin = timezone(timedelta(hours=1))
    rows = json.loads(json_rows([
        (ours, theirs, 2**63 - 1, None, "ä\"\\", date(2026, 11, 1),
         datetime(2026, 11, 1, 0, 0, 0, 1, tzinfo=berlin), {"zone": "eu"}),
    ]))
    assert rows == [[str(ours), str(theirs), 2**63 - 1, None, "ä\"\\", "2026-11-01",
                     "2026-11-01T00:00:00.000001+01:00", {"zone": "eu"}]]


def test_a_naive_time_is_utc_as_asyncpg_takes_it() -> None:
    naive = datetime(2026, 11, 1, 12, 0)  # noqa: DTZ001 -- the case under test
    assert json.loads(json_rows([(naive,)])) == [
        ["2026-11-01T12:00:00+00:00"]]
    assert json.loads(json_rows([(datetime(2026, 11, 1, 12, 0, tzinfo=UTC),)])) == [
        ["2026-11-01T12:00:00+00:00"]]


def test_single_values_make_a_flat_array() -> None:
    assert json.loads(json_rows(["a", "b"])) == ["a", "b"]


def test_a_value_without_an_exact_json_form_is_refused() -> None:
    with pytest.raises(TypeError):
        json_rows([(Fraction(1, 3),)])
