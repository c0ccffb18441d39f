"""What one request may ask for: depth, aliases, tokens and complexity, as schema extensions whose
validation rules are made once per schema.

strawberry's `QueryDepthLimiter` and `MaxAliasesLimiter` create a new validation-rule class
per instance. Given to the schema as factories (an instance per request, as extensions must
be), they made new rule classes for every request, and the `ValidationCache` — keyed by the
document *and* the rule classes — never hit. Here the rules are created once and each
request gets a fresh `AddValidationRules` carrying those same classes.
"""

from __future__ import annotations

from collections.abc import Callable

from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from tollgate_api.complexity import complexity_rule


def limit_extensions(depth_max: int, aliases_max: int, tokens_max: int,
                     complexity_max: int = 10_000, default_page: int = 20, max_page: int = 100
                     ) -> list[Callable[[], SchemaExtension]]:
    rules = [*QueryDepthLimiter(max_depth=depth_max).validation_rules,
             *MaxAliasesLimiter(max_alias_count=aliases_max).validation_rules,
             complexity_rule(complexity_max, default_page, max_page)]
    return [lambda: AddValidationRules(rules),
            lambda: MaxTokensLimiter(max_token_count=tokens_max)]
