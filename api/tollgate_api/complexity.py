"""Query complexity: what a document may cost before anything runs.

A field costs 1 plus its selection's cost times how many items it may return: the `first`
argument of a list (a variable counts as the largest page, since validation cannot see its
value), the default page for a connection asked without `first`, 1 otherwise. Fragments are
expanded where they are spread, so they cannot hide cost. Depth, alias and token limits bound
the shape of a document; this bounds the work (nested pages multiply).
"""

from __future__ import annotations

from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    get_named_type,
)


def complexity_rule(limit: int, default_page: int, max_page: int) -> type[ValidationRule]:
    """A validation rule refusing operations that cost more than `limit`
    (extensions.code COMPLEXITY_LIMIT, with the cost and the limit)."""

    class QueryComplexity(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            root = self.context.schema.get_root_type(node.operation)
            if root is None:
                return
            cost = _cost(self.context, node.selection_set, root, frozenset(), default_page,
                         max_page)
            if cost > limit:
                self.report_error(GraphQLError(
                    f"query complexity {cost} exceeds the limit of {limit}: ask for fewer "
                    "items per page or fewer nested lists",
                    node, extensions={"code": "COMPLEXITY_LIMIT", "complexity": cost,
                                      "limit": limit}))

    return QueryComplexity


def _cost(context: ValidationContext, selection_set: SelectionSetNode | None,
          parent: GraphQLNamedType | None, fragments: frozenset[str], default_page: int,
          max_page: int) -> int:
    if selection_set is None:
        return 0
    schema = context.schema
    total = 0
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            child: GraphQLNamedType | None = None
            if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
                definition = parent.fields.get(selection.name.value)
                if definition is not None:
                    child = get_named_type(definition.type)
            items = _items(selection, child, default_page, max_page)
            total += 1 + items * _cost(context, selection.selection_set, child, fragments,
                                       default_page, max_page)
        elif isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            target = schema.get_type(condition.name.value) if condition else parent
            total += _cost(context, selection.selection_set, target, fragments, default_page,
                           max_page)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = context.get_fragment(name)
            if fragment is None or name in fragments:
                continue  # unknown or cyclic spreads are other rules' errors
            total += _cost(context, fragment.selection_set,
                           schema.get_type(fragment.type_condition.name.value),
                           fragments | {name}, default_page, max_page)
    return total


def _items(field: FieldNode, child: GraphQLNamedType | None, default_page: int,
           max_page: int) -> int:
    for argument in field.arguments or ():
        if argument.name.value != "first":
            continue
        if isinstance(argument.value, IntValueNode):
            return max(1, min(int(argument.value.value), max_page))
        if isinstance(argument.value, VariableNode):
            return max_page
    if child is not None and child.name.endswith("Connection"):
        return default_page
    return 1
