"""What one request may ask for: depth, aliases and tokens, as schema extensions whose
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


def limit_extensions(depth_max: int, aliases_max: int, tokens_max: int
                     ) -> list[Callable[[], SchemaExtension]]:
    rules = [*QueryDepthLimiter(max_depth=depth_max).validation_rules,
             *MaxAliasesLimiter(max_alias_count=aliases_max).validation_rules]
    return [lambda: AddValidationRules(rules),
            lambda: MaxTokensLimiter(max_token_count=tokens_max)]
