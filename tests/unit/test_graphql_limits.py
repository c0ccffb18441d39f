"""The request limits keep the validation cache effective: the same document is validated
once, however many requests send it, and the limits still apply."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import strawberry.schema.schema as strawberry_schema
from graphql.validation import validate
from strawberry.extensions import AddValidationRules

from tollgate_api.limits import limit_extensions
from tollgate_api.schema import ALIASES_MAX, build_schema


def test_every_request_gets_fresh_extensions_with_the_same_rule_classes() -> None:
    rules_factory, tokens_factory = limit_extensions(10, 30, 2_000)
    first, second = rules_factory(), rules_factory()
    assert isinstance(first, AddValidationRules) and isinstance(second, AddValidationRules)
    assert first is not second  # extensions hold per-request state; never shared
    assert first.validation_rules == second.validation_rules
    assert len(first.validation_rules) == 3  # depth, aliases, complexity
    assert tokens_factory() is not tokens_factory()


async def test_a_repeated_query_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        return validate(*args, **kwargs)

    monkeypatch.setattr(strawberry_schema, "validate", counting)
    schema = build_schema()
    query = f"query Q{uuid.uuid4().hex} {{ __typename }}"  # new to the process-wide cache
    for _ in range(3):
        result = await schema.execute(query)
        assert result.errors is None and result.data == {"__typename": "Query"}
    assert len(calls) == 1

    too_many = "{ " + " ".join(f"a{i}: __typename" for i in range(ALIASES_MAX + 1)) + " }"
    for _ in range(2):
        refused = await schema.execute(too_many)
        assert refused.errors and "aliases found" in refused.errors[0].message
