"""Turn an :class:`Outcome` into Kopf actions: a status patch, Events, a retry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf

from tollgate_operator.conditions import status_changes
from tollgate_operator.outcome import Outcome


def post_events(body: Mapping[str, Any], outcome: Outcome) -> None:
    target = cast(kopf.Body, body)
    for event in outcome.events:
        post = kopf.warn if event.warning else kopf.info
        post(target, reason=event.reason, message=event.message)


def apply_outcome(patch: kopf.Patch, body: kopf.Body, outcome: Outcome, *,
                  retry: bool = True) -> None:
    """Write only the status fields that changed, post events, raise a temporary error.

    With `retry=False` (timers) a temporary failure just waits for the next tick.
    """
    for key, value in status_changes(body.get("status"), outcome.status).items():
        patch.status[key] = value
    post_events(body, outcome)
    if retry and outcome.retry_after_s is not None:
        raise kopf.TemporaryError(outcome.retry_message, delay=outcome.retry_after_s)
