"""Typed errors of the BSS, by what the caller should do; each edge maps them once."""

from __future__ import annotations


class DomainError(Exception):
    """Base: `code` is stable (GraphQL extensions.code, CR condition reason)."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(DomainError):
    code = "NOT_FOUND"


class Forbidden(DomainError):
    code = "FORBIDDEN"


class Invalid(DomainError):
    code = "VALIDATION"


class Conflict(DomainError):
    code = "CONFLICT"


class InsufficientFunds(DomainError):
    code = "INSUFFICIENT_FUNDS"
