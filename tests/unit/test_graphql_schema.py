"""The checked-in GraphQL schema is the one the code serves."""

from __future__ import annotations

from pathlib import Path

from tollgate_api.export import sdl

SCHEMA = Path(__file__).resolve().parents[2] / "api" / "schema.graphql"


def test_checked_in_schema_is_current() -> None:
    assert SCHEMA.read_text() == sdl(), "api/schema.graphql is stale: run `make schema`"


def test_schema_has_no_floats() -> None:
    # Money and quantities are exact: Long (integers) and decimal strings only.
    assert "Float" not in sdl()
