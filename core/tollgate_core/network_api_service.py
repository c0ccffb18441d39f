"""Network API calls of partners, metered and rated in one transaction (ADR 0015).

A call is, in one PostgreSQL transaction of the partner's tenant: a repeat check (the
idempotency key names the call), the agreement's terms from the latest catalog revision
(FORBIDDEN without the API), the month counter (QUOTA_EXCEEDED), the one-second window
(RATE_LIMITED), the call record, the operation's own record (a QoD session), the charge as a
ledger transfer and the request to the network through the outbox. Refused calls leave
nothing behind; a repeat returns the first answer and is neither counted nor charged again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from tollgate_core.domain.errors import Conflict, Forbidden, Invalid
from tollgate_core.domain.network_api import (
    NetworkApiName,
    QodRequest,
    QosProfile,
    QuotaExceeded,
    RateLimited,
    api_terms,
    call_charge,
    call_id,
    month_start,
    next_month_start,
    provision_request,
    request_digest,
    session_id,
    window_start,
)
from tollgate_core.store import network_api_repo, outbox, rating_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_core.store.network_api_repo import CallRow

IDEMPOTENCY_KEY_MAX = 200


def provision_subject(tenant: str) -> str:
    return f"tg.{tenant}.oss.provision.request"


@dataclass(frozen=True, slots=True)
class QodSession:
    session_id: uuid.UUID
    call_id: uuid.UUID
    requested_at: datetime
    price_micros: int
    currency: str
    repeated: bool
    """True when this answers a repeat of an earlier call (nothing new was counted)."""


async def request_quality_on_demand(pool: Pool, tenant: str, agreement: str,
                                    request: QodRequest, idempotency_key: str,
                                    now: datetime) -> QodSession:
    """Record a QoD session request of `agreement`'s partner, metered and charged."""
    request.check()
    if not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
        raise Invalid(f"idempotencyKey must have 1 to {IDEMPOTENCY_KEY_MAX} characters",
                      field="idempotencyKey")
    api = NetworkApiName.QUALITY_ON_DEMAND.value
    call = call_id(tenant, agreement, api, idempotency_key)
    digest = request_digest(request.as_request())
    async with tenant_tx(pool, tenant) as conn:
        await network_api_repo.lock_call(conn, call)
        stored = await network_api_repo.find_call(conn, call)
        if stored is not None:
            if stored.request_digest != digest:
                raise Conflict("idempotencyKey was already used with a different input",
                               field="idempotencyKey")
            assert stored.session_id is not None, "a QoD call has its session"
            return QodSession(stored.session_id, call, stored.called_at, stored.price_micros,
                              stored.currency, repeated=True)
        catalog = await network_api_repo.latest_terms(conn, agreement)
        if catalog is None:
            raise Forbidden("the tenant has no published catalog")
        terms = api_terms(agreement, catalog.spec, api, now)
        assert catalog.spec is not None  # api_terms refused otherwise
        month = month_start(now, catalog.timezone)
        month_calls = await network_api_repo.count_month(conn, tenant, agreement, api, month,
                                                         terms.monthly_quota)
        if month_calls is None:
            assert terms.monthly_quota is not None
            resets = next_month_start(month, catalog.timezone)
            raise QuotaExceeded(
                f"the monthly quota of {terms.monthly_quota} {api} calls is used up until "
                f"{resets.isoformat()}", terms.monthly_quota, resets)
        if await network_api_repo.count_second(conn, tenant, agreement, api, window_start(now),
                                               terms.rate_limit_per_second) is None:
            raise RateLimited(f"more than {terms.rate_limit_per_second} {api} calls per second",
                              terms.rate_limit_per_second, 1)
        # The meter row stays locked to COMMIT, so the month's calls are numbered without
        # gaps or repeats across replicas: this call is number `month_calls - 1` (from 0),
        # which picks its tier (a refused call rolls the counter back with it).
        number = month_calls - 1
        price = terms.price_of_call(number)
        await network_api_repo.insert_call(conn, tenant, CallRow(
            call, agreement, api, "requestQualityOnDemand", idempotency_key, digest, now,
            month, price, catalog.currency, catalog.revision, number))
        session = session_id(call)
        await network_api_repo.insert_qod_session(
            conn, tenant, session, call, agreement, request.msisdn, request.profile.value,
            request.duration_seconds, now)
        charge = call_charge(call, agreement, price, catalog.currency)
        if charge is not None:
            await network_api_repo.ensure_accounts(conn, tenant, agreement, catalog.currency)
            await rating_repo.post_transfers(conn, tenant, [charge])
        await outbox.enqueue_raw(conn, tenant, [(
            session, provision_subject(tenant),
            provision_request(tenant, session, agreement, catalog.spec.partner.id, request,
                              now), {})])
    return QodSession(session, call, now, price, catalog.currency, repeated=False)


__all__ = ["QodRequest", "QodSession", "QosProfile", "request_quality_on_demand"]
