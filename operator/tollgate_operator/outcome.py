"""What a reconcile decided, for the handler to write: status, events, retry.

The logic modules return an :class:`Outcome`; the handlers (Kopf) write the status only where
it changed, post the events and turn `retry_after_s` into a `kopf.TemporaryError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post on the reconciled object."""

    warning: bool
    reason: str
    message: str


@dataclass(slots=True)
class Outcome:
    """Desired status fields (a merge patch of `.status`), events, and when to try again."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    retry_after_s: float | None = None
    """Set for temporary failures (an outage, a Tenant not ready yet): retry after this."""
    retry_message: str = ""
