"""The rows of a bulk statement as one JSON parameter.

asyncpg encodes an array parameter element by element, and checks every element with
`isinstance` against abstract base classes (to tell nested arrays from scalars); over the
dozen columns of a rating batch that was most of the Python time of its statements. orjson
writes the same rows as one JSON array of arrays in C, and the statement takes them apart:
`FROM jsonb_array_elements($n::text::jsonb) AS e` and `(e->>i)::type` per column (`e->i` for
a jsonb value). It is still one statement per table per batch (ADR 0004).

Values: str, int, None, bool, dict/list (nested JSON), uuid.UUID (asyncpg's too), date, and
datetime (naive ones are taken as UTC, as asyncpg does for timestamptz). Anything else is a
TypeError, not a silent string.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import orjson


def _default(value: object) -> str:
    if isinstance(value, uuid.UUID):  # asyncpg returns its own subclass, orjson wants uuid.UUID
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a bulk statement value")


def json_rows(rows: Iterable[object]) -> str:
    """`rows` (tuples, or single values) as one JSON array, for
    `jsonb_array_elements($n::text::jsonb)` (or `jsonb_array_elements_text`)."""
    return orjson.dumps(rows if isinstance(rows, list) else list(rows), default=_default,
                        option=orjson.OPT_NAIVE_UTC).decode()
