"""strawberry's graphql-core execution context, with two changes that matter per request
(ADR 0009, "Dashboard latency"):

- No reference cycle. graphql-core's `Executor` keeps `async_helpers` made of its own bound
  methods, so an executor referred to itself: each operation's executor, and with it the
  context, the DataLoaders and every row they read, outlived the request until the cyclic
  garbage collector found them. A loaded API process spent ~6 % of its time in collections,
  and full ones, filled by promoted in-flight requests, paused it for up to tens of
  milliseconds. Here the helpers reach the executor through weak references, and a finished
  operation is freed by reference counting.
- Plain fields skip graphql-core's general path. Most fields of a result are strawberry
  "basic" fields — an attribute, no resolver, no field extension (hence no permission
  check), no arguments — of a scalar, enum or object type; graphql-core builds a
  resolve-info object and a path for each and descends `complete_value` through the
  non-null and object cases. Here a plain leaf is read (`attrgetter`) and coerced in the
  selection's loop, a plain object field or an object of a type without `is_type_of` (a
  list's item, a resolver's value) goes straight to its own fields; null checks, messages
  and `handle_field_error` are graphql-core's, and a path is made only for an error.
  Anything else — a resolver, arguments, middleware, lists, abstract types — takes
  graphql-core's path (`tests/unit/test_graphql_execution.py` compares both).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from operator import attrgetter
from typing import Any, cast

from graphql import (
    GraphQLField,
    GraphQLLeafType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    is_leaf_type,
)
from graphql.execution.collect_fields import FieldDetailsList, GroupedFieldSet
from graphql.pyutils import Path, Undefined, gather_with_cancel
from graphql.type.definition import GraphQLResolveInfoHelpers
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField

BASIC_RESOLVER = "_get_basic_result"
"""The name of strawberry's resolver for a basic field (reads the attribute, ignores `info`).
Should strawberry rename it, the fast path is simply never taken (a test says so)."""

_Plan = tuple[Callable[[Any], Any], GraphQLLeafType | GraphQLObjectType, bool] | None
_PLAN = "_tollgate_plain_plan"


def _plan(field_def: GraphQLField) -> _Plan:
    """(read, named type, non-null) of a plain field — a basic field without arguments whose
    type is a leaf, or an object type without `is_type_of` — else None. Kept on the field
    definition: computed once per schema."""
    attributes = vars(field_def)
    if _PLAN in attributes:
        known: _Plan = attributes[_PLAN]
        return known
    resolve = field_def.resolve
    field_type = field_def.type
    non_null = isinstance(field_type, GraphQLNonNull)
    named = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
    plan: _Plan = None
    plain = is_leaf_type(named) or (isinstance(named, GraphQLObjectType)
                                    and named.is_type_of is None)
    if (resolve is not None and getattr(resolve, "__name__", None) == BASIC_RESOLVER
            and not field_def.args and plain):
        field = field_def.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
        read: Callable[[Any], Any] = partial(resolve, info=None)
        if isinstance(field, StrawberryField) and field.default_resolver is getattr:
            read = attrgetter(field.python_name)  # what strawberry's resolver does, in C
        plan = (read, cast("GraphQLLeafType | GraphQLObjectType", named), non_null)
    attributes[_PLAN] = plan
    return plan


def _weak(method: Callable[..., Any]) -> Callable[..., Any]:
    ref = weakref.WeakMethod(method)

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = ref()
        if bound is None:
            raise RuntimeError("the operation's execution has ended")
        return bound(*args, **kwargs)

    return call


_Leaf = tuple[Callable[[Any], Any], GraphQLLeafType, bool, GraphQLField]
_Entry = tuple[str, FieldDetailsList, _Leaf | None]


class ExecutionContext(StrawberryGraphQLCoreExecutionContext):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.async_helpers = GraphQLResolveInfoHelpers(
            gather=_weak(self.gather_async_work), track=_weak(self.track_async_work))
        manager = self.middleware_manager
        self._plain_fields = manager is None or not manager.middlewares
        self._entries: dict[int, tuple[GroupedFieldSet, GraphQLObjectType, list[_Entry]]] = {}

    def _entries_of(self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet
                    ) -> list[_Entry]:
        """The selection's fields, each with its plan when it is a plain leaf (once per
        selection and execution: the items of a list share their selection)."""
        known = self._entries.get(id(grouped_field_set))
        if known is not None and known[0] is grouped_field_set and known[1] is parent_type:
            return known[2]
        entries: list[_Entry] = []
        for response_name, field_details_list in grouped_field_set.items():
            node = field_details_list[0].node
            field_def = self.schema.get_field(parent_type, node.name.value)
            plan = _plan(field_def) if field_def is not None and not node.arguments else None
            leaf: _Leaf | None = None
            if plan is not None and field_def is not None and not isinstance(
                    plan[1], GraphQLObjectType):
                leaf = (plan[0], plan[1], plan[2], field_def)
            entries.append((response_name, field_details_list, leaf))
        self._entries[id(grouped_field_set)] = (grouped_field_set, parent_type, entries)
        return entries

    def execute_fields(self, parent_type: GraphQLObjectType, source_value: Any,
                       path: Path | None, grouped_field_set: GroupedFieldSet,
                       position_context: Any) -> Any:
        """graphql-core's execute_fields, with plain leaf fields completed in the loop (their
        path is made only for an error)."""
        if not self._plain_fields:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set,
                                          position_context)
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for response_name, field_details_list, leaf in self._entries_of(
                    parent_type, grouped_field_set):
                if leaf is not None:
                    read, leaf_type, non_null, field_def = leaf
                    try:
                        value = read(source_value)
                        if isinstance(value, Exception):
                            raise value
                        if value is None or value is Undefined:
                            if non_null:
                                raise TypeError(
                                    "Cannot return null for non-nullable field "
                                    f"{parent_type.name}.{field_details_list[0].node.name.value}.")
                            results[response_name] = None
                        else:
                            results[response_name] = self.complete_leaf_value(leaf_type, value)
                    except Exception as raw_error:  # as graphql-core's execute_field
                        self.handle_field_error(raw_error, field_def.type, field_details_list,
                                                Path(path, response_name, parent_type.name))
                        results[response_name] = None
                    continue
                result = self.execute_field(parent_type, source_value, field_details_list,
                                            Path(path, response_name, parent_type.name),
                                            position_context)
                if result is not Undefined:
                    results[response_name] = result
                    if is_awaitable(result):
                        awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:
                # Other fields' awaitables are settled, as they may fail too.
                self.settle_in_background([results[field] for field in awaitable_fields])
            raise
        if not awaitable_fields:
            return results

        async def get_results() -> dict[str, Any]:
            if len(awaitable_fields) == 1:
                field = awaitable_fields[0]
                results[field] = await results[field]
            else:
                awaited = await gather_with_cancel(*(results[field]
                                                     for field in awaitable_fields))
                results.update(zip(awaitable_fields, awaited, strict=True))
            return results

        return get_results()

    def execute_field(self, parent_type: GraphQLObjectType, source: Any,
                      field_details_list: FieldDetailsList, path: Path,
                      position_context: Any) -> Any:
        node = field_details_list[0].node
        field_def = self.schema.get_field(parent_type, node.name.value)
        plan = (_plan(field_def) if self._plain_fields and field_def is not None
                and not node.arguments else None)
        if plan is None or field_def is None:
            return super().execute_field(parent_type, source, field_details_list, path,
                                         position_context)
        # What graphql-core's execute_field and complete_value do for such a field, without
        # the resolve info (nothing reads it: no resolver, no is_type_of, no list).
        read, named, non_null = plan
        try:
            value = read(source)
            if self.is_awaitable(value):  # not a plain value after all
                return super().execute_field(parent_type, source, field_details_list, path,
                                             position_context)
            if isinstance(value, Exception):
                raise value
            if value is None or value is Undefined:
                if non_null:
                    raise TypeError("Cannot return null for non-nullable field "
                                    f"{parent_type.name}.{node.name.value}.")
                return None
            if not isinstance(named, GraphQLObjectType):
                return self.complete_leaf_value(named, value)
            completed = self.collect_and_execute_subfields(named, field_details_list, path,
                                                           value, position_context)
        except Exception as raw_error:
            self.handle_field_error(raw_error, field_def.type, field_details_list, path)
            return None
        if self.is_awaitable(completed):
            return self._await_completed(completed, field_def, field_details_list, path)
        return completed

    def complete_value(self, return_type: GraphQLOutputType, field_details_list: FieldDetailsList,
                       info: GraphQLResolveInfo[Any], path: Path, result: Any,
                       position_context: Any) -> Any:
        """An object of a type without `is_type_of` (a list's items, a resolver's value) goes
        straight to its fields, as graphql-core's descent through the non-null and object
        cases would; anything else takes that descent."""
        named = return_type.of_type if isinstance(return_type, GraphQLNonNull) else return_type
        if (isinstance(named, GraphQLObjectType) and named.is_type_of is None
                and result is not None and result is not Undefined
                and not isinstance(result, Exception)):
            return self.collect_and_execute_subfields(named, field_details_list, path, result,
                                                      position_context)
        return super().complete_value(return_type, field_details_list, info, path, result,
                                      position_context)

    async def _await_completed(self, completed: Awaitable[Any], field_def: GraphQLField,
                               field_details_list: FieldDetailsList, path: Path) -> Any:
        try:
            return await completed
        except Exception as raw_error:
            self.handle_field_error(raw_error, field_def.type, field_details_list, path)
            return None
