"""Customer care values: consent purposes, orders, cancellation timing, pseudonyms."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import date, datetime, time
from enum import StrEnum
from zoneinfo import ZoneInfo


class ConsentPurpose(StrEnum):
    MARKETING = "marketing"
    DATA_PROCESSING = "dataProcessing"


class CancelEffect(StrEnum):
    IMMEDIATE = "immediate"
    END_OF_PERIOD = "endOfPeriod"


class OrderType(StrEnum):
    ADD = "add"
    CANCEL = "cancel"


class OrderState(StrEnum):
    PENDING = "pending"  # accepted, takes effect at `due_at`
    COMPLETED = "completed"
    CANCELLED = "cancelled"  # superseded before it took effect


class ItemAction(StrEnum):
    ADD = "add"
    DELETE = "delete"


CHANNEL_PATTERN = re.compile(r"^[a-z][a-zA-Z]{0,31}$")


def bill_cycle_end(now: datetime, cycle_day: int, timezone: str) -> datetime:
    """The start of the next bill cycle after `now`: local midnight of `cycle_day`."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    candidate = date(local.year, local.month, cycle_day)
    if datetime.combine(candidate, time(), zone) <= now:
        month = local.month % 12 + 1
        year = local.year + (1 if month == 1 else 0)
        candidate = date(year, month, cycle_day)
    return datetime.combine(candidate, time(), zone)


PSEUDONYM_PREFIX = "erased-"
PSEUDONYM_EMAIL_DOMAIN = "erased.invalid"  # RFC 2606: never deliverable


def pseudonym() -> str:
    """An irreversible stand-in for a personal value: random, so nothing links it back
    (a hash of an MSISDN could be reversed by trying every number)."""
    return PSEUDONYM_PREFIX + secrets.token_hex(12)


def pseudonymous_email() -> str:
    return f"{pseudonym()}@{PSEUDONYM_EMAIL_DOMAIN}"


def is_pseudonym(value: str) -> bool:
    return value.startswith(PSEUDONYM_PREFIX)


def api_key_digest(key: str) -> str:
    """What is stored of a partner API key. Keys carry 256 random bits, so a fast hash is
    enough: there is nothing to guess, unlike a password."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    """256 random bits, URL-safe (the same form the operator puts in the agreement's Secret)."""
    return secrets.token_urlsafe(32)
