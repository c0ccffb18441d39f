"""What one request may ask for: depth, aliases, tokens and complexity, as schema extensions whose
validation rules are made once per schema.

strawberry's `QueryDepthLimiter` and `MaxAliasesLimiter` create a new validation-rule class
per instance. Given to the schema as factories (an instance per request, as extensions must
be), they made new rule classes for every request, and the `ValidationCache` — keyed by the
document *and* the rule classes — never hit. Here the rules are created once and each
request gets a fresh `AddValidationRules` carrying those same classes.

Validation results are cached by the document's text (`ValidationCache`), not by its syntax
tree as strawberry's cache is: hashing the tree walks every node on every request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from graphql import GraphQLError
from graphql.validation import ASTValidationRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.schema.schema import validate_document

from tollgate_api.complexity import complexity_rule


def limit_extensions(depth_max: int, aliases_max: int, tokens_max: int,
                     complexity_max: int = 10_000, default_page: int = 20, max_page: int = 100
                     ) -> list[Callable[[], SchemaExtension]]:
    rules = [*QueryDepthLimiter(max_depth=depth_max).validation_rules,
             *MaxAliasesLimiter(max_alias_count=aliases_max).validation_rules,
             complexity_rule(complexity_max, default_page, max_page)]
    return [lambda: AddValidationRules(rules),
            lambda: MaxTokensLimiter(max_token_count=tokens_max)]


Rules = tuple[type[ASTValidationRule], ...]


class ValidationCache(SchemaExtension):
    """strawberry's `ValidationCache`, keyed by the document's text and the rules instead of
    the parsed document, whose hash walks the whole syntax tree (about 60 µs for the
    dashboard query here, on every request). One text always parses to the same tree, so
    its errors are the same. `cache` is the schema's, shared by its requests; the least
    recently used of more than `maxsize` entries are forgotten."""

    def __init__(self, cache: OrderedDict[tuple[str, Rules], list[GraphQLError]],
                 maxsize: int) -> None:
        super().__init__()
        self.cache = cache
        self.maxsize = maxsize

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        document = context.graphql_document
        if context.query is None or document is None:  # no text: strawberry validates
            yield
            return
        key = (context.query, context.validation_rules)
        errors = self.cache.get(key)
        if errors is None:
            errors = validate_document(context.schema._schema, document,
                                       context.validation_rules)
            self.cache[key] = errors
            while len(self.cache) > self.maxsize:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(key)
        context.pre_execution_errors = errors
        yield
