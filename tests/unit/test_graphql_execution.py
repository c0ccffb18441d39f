"""The execution context: plain fields (strawberry's basic fields of a leaf or object type)
skip graphql-core's resolve-info path with the same results and errors, anything else takes
it, and an execution leaves no reference cycle behind."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import strawberry
from graphql import GraphQLObjectType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from tollgate_api.execution import ExecutionContext, _plan
from tollgate_api.schema import build_schema


@strawberry.type
class Leaf:
    name: str
    count: int | None


@strawberry.type
class Node:
    id: strawberry.ID
    label: str
    leaf: Leaf
    maybe: Leaf | None
    missing: str  # None at run time: a non-null violation

    @strawberry.field
    def shout(self) -> str:
        return self.label.upper()

    @strawberry.field
    async def later(self) -> Leaf:
        return Leaf(name="later", count=2)


@strawberry.type
class Query:
    @strawberry.field
    async def nodes(self) -> list[Node]:
        return [Node(id=strawberry.ID(str(i)), label=f"n{i}", leaf=Leaf(name=f"l{i}", count=i),
                     maybe=None, missing=None)  # type: ignore[arg-type]
                for i in range(3)]


QUERY = "{ nodes { id label shout leaf { name count } maybe { name } later { name count } } }"
BROKEN = "{ nodes { id missing } }"


def schemas() -> tuple[strawberry.Schema, strawberry.Schema]:
    return (strawberry.Schema(query=Query, execution_context_class=ExecutionContext),
            strawberry.Schema(query=Query,
                              execution_context_class=StrawberryGraphQLCoreExecutionContext))


@pytest.mark.parametrize("query", [QUERY, BROKEN])
async def test_results_and_errors_are_graphql_cores(query: str) -> None:
    ours, theirs = schemas()
    mine, reference = await ours.execute(query), await theirs.execute(query)
    assert mine.data == reference.data
    assert [e.formatted for e in mine.errors or []] == \
        [e.formatted for e in reference.errors or []]


async def test_only_fields_with_resolvers_get_a_resolve_info(
        monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    original = ExecutionContext.build_resolve_info

    def counting(self: Any, field_def: Any, field_nodes: Any, parent_type: Any,
                 path: Any) -> Any:
        built.append(f"{parent_type.name}.{field_nodes[0].name.value}")
        return original(self, field_def, field_nodes, parent_type, path)

    monkeypatch.setattr(ExecutionContext, "build_resolve_info", counting)
    result = await schemas()[0].execute(QUERY)
    assert result.errors is None
    # Resolvers and lists take graphql-core's path; id, label, leaf, maybe and the leaves'
    # fields do not.
    assert sorted(set(built)) == ["Node.later", "Node.shout", "Query.nodes"]


def test_the_schemas_basic_fields_are_recognised() -> None:
    """strawberry names its basic-field resolver `_get_basic_result`: should that change,
    nothing breaks, but every field would take the slow path again."""
    types = build_schema()._schema.type_map
    usage, money, customer = (types[name] for name in ("RatedUsage", "Money", "Customer"))
    assert isinstance(usage, GraphQLObjectType) and isinstance(money, GraphQLObjectType)
    assert isinstance(customer, GraphQLObjectType)
    assert _plan(usage.fields["eventId"]) is not None
    assert _plan(usage.fields["charge"]) is not None
    assert _plan(money.fields["amount"]) is not None
    assert _plan(customer.fields["usage"]) is None  # a resolver


async def test_an_execution_leaves_no_reference_cycle() -> None:
    schema = schemas()[0]
    await schema.execute(QUERY)  # caches warmed
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            assert (await schema.execute(QUERY)).errors is None
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage
                if isinstance(o, ExecutionContext | Node | Leaf)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
