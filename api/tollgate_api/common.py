"""Errors and pagination shared by the resolvers."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from graphql import GraphQLError

from tollgate_api.types import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UserError,
    ValidationError,
)
from tollgate_core.domain.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from tollgate_core.store.queries import Keyset

MAX_PAGE = 100


def graphql_error(error: DomainError) -> GraphQLError:
    """Expected errors keep their message and carry a stable code and the field."""
    return GraphQLError(error.message, extensions={"code": error.code, "field": error.field})


def is_internal(error: GraphQLError) -> bool:
    """Errors to mask: everything but errors we raised on purpose (they carry
    extensions.code)."""
    deliberate = bool(error.extensions and "code" in error.extensions)
    return not deliberate and error.original_error is not None


def user_error(error: DomainError) -> UserError:
    kinds: dict[type[DomainError], type] = {Invalid: ValidationError, NotFound: NotFoundError,
                                            Conflict: ConflictError, Forbidden: ForbiddenError}
    kind = kinds.get(type(error), ValidationError)
    result: UserError = kind(code=error.code, message=error.message, field=error.field)
    return result


def page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise graphql_error(Invalid(f"first must be between 1 and {MAX_PAGE}", field="first"))
    return first


def cursor(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode()


def uncursor(value: str) -> list[str]:
    try:
        return base64.urlsafe_b64decode(value.encode()).decode().split("|")
    except (ValueError, UnicodeDecodeError) as exc:
        raise graphql_error(Invalid("malformed cursor", field="after")) from exc


def keyset_cursor(when: datetime, row_id: uuid.UUID) -> str:
    return cursor(when.isoformat(), str(row_id))


def keyset(after: str | None) -> Keyset | None:
    """The (time, id) position an `after` cursor of a newest-first list stands for."""
    if after is None:
        return None
    parts = uncursor(after)
    try:
        when, row_id = parts
        return datetime.fromisoformat(when), uuid.UUID(row_id)
    except ValueError as exc:
        raise graphql_error(Invalid("malformed cursor", field="after")) from exc
