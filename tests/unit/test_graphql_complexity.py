"""Query complexity: nested pages multiply; fragments and variables cannot hide the cost."""

from __future__ import annotations

from typing import Any

from graphql import parse, validate

from tollgate_api.complexity import complexity_rule
from tollgate_api.schema import COMPLEXITY_MAX, build_schema

SCHEMA = build_schema()._schema
RULE = complexity_rule(COMPLEXITY_MAX, 20, 100)

DASHBOARD = """{ me { name balance { balance { amountMicros } }
  usage(first: 20) { edges { node { quantity catalogRevision charge { amountMicros } } } }
  invoices(first: 3) { edges { node { billNo lines { name quantity } } } } } }"""

# 100 customers × 100 usage records × (edges + node + 3 fields…)
GREEDY = """{ customers(first: 100) { edges { node {
  usage(first: 100) { edges { node { quantity catalogRevision startTime } } } } } } }"""

GREEDY_BY_FRAGMENT = """query { customers(first: 100) { edges { node { ...Usage } } } }
fragment Usage on Customer { usage(first: 100) { edges { node { quantity startTime } } } }"""

GREEDY_BY_VARIABLE = """query($n: Int!) { customers(first: $n) { edges { node {
  usage(first: $n) { edges { node { quantity } } } } } } }"""


def errors(document: str) -> list[dict[str, Any]]:
    return [dict(e.formatted) for e in validate(SCHEMA, parse(document), [RULE])]


def test_the_dashboard_is_well_under_the_limit() -> None:
    assert validate(SCHEMA, parse(DASHBOARD)) == []  # a real query of this schema
    assert errors(DASHBOARD) == []


def test_nested_pages_multiply_and_are_refused_with_the_cost() -> None:
    assert validate(SCHEMA, parse(GREEDY)) == []
    (error,) = errors(GREEDY)
    assert error["extensions"]["code"] == "COMPLEXITY_LIMIT"
    assert error["extensions"]["complexity"] > COMPLEXITY_MAX
    assert "fewer items per page" in error["message"]


def test_fragments_and_variables_do_not_hide_the_cost() -> None:
    assert [e["extensions"]["code"] for e in errors(GREEDY_BY_FRAGMENT)] == ["COMPLEXITY_LIMIT"]
    assert [e["extensions"]["code"] for e in errors(GREEDY_BY_VARIABLE)] == ["COMPLEXITY_LIMIT"]


def test_a_connection_without_first_counts_its_default_page() -> None:
    small = complexity_rule(50, 20, 100)
    document = "{ customers { edges { node { name } } } }"  # 1 + 20 × (1 + 1 + 1) = 61
    (error,) = validate(SCHEMA, parse(document), [small])
    assert (error.extensions or {})["complexity"] == 61


async def test_the_schema_refuses_a_greedy_query_before_running_it() -> None:
    result = await build_schema().execute(GREEDY)
    assert result.data is None and result.errors
    extensions = result.errors[0].extensions or {}
    assert extensions["code"] == "COMPLEXITY_LIMIT" and extensions["limit"] == COMPLEXITY_MAX
