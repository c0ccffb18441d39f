"""Revenue assurance for admins: the audit chain's state and reconciliation runs with their
variances. Mounted on Query as `assurance` (one line in schema.py):

    assurance: Assurance = strawberry.field(resolver=resolve_assurance,
                                            description=ASSURANCE_DESCRIPTION)
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

import strawberry
from strawberry.types import Info

from tollgate_api.common import (
    cursor,
    graphql_error,
    keyset,
    keyset_cursor,
    page_size,
    uncursor,
)
from tollgate_api.context import Context
from tollgate_api.types import Long, Money, PageInfo
from tollgate_core.assurance.reconcile import VarianceKind as CoreVarianceKind
from tollgate_core.domain.errors import Forbidden, Invalid
from tollgate_core.store import audit_repo, reconcile_repo
from tollgate_core.store.db import tenant_tx

ASSURANCE_DESCRIPTION = "Revenue assurance: audit chain and legacy reconciliation (admins)."

VarianceKind = strawberry.enum(CoreVarianceKind, name="VarianceKind",
                               description="What a reconciliation found (docs/legacy-feed.md).")


@strawberry.type(description="The tenant's hash-chained audit trail of money-moving records.")
class AuditChain:
    length: int = strawberry.field(graphql_type=Long,
                                   description="Events chained from genesis (the head).")
    head_hash: str | None = strawberry.field(description="SHA-256 of the head, hex.")
    pending: int = strawberry.field(graphql_type=Long,
                                    description="Events captured, not chained yet.")


@strawberry.type(description="One difference between the legacy extract and Tollgate.")
class Variance:
    number: int
    kind: CoreVarianceKind = strawberry.field(graphql_type=VarianceKind)
    event_id: uuid.UUID | None
    legacy_record_id: str | None
    legacy_line: int | None = strawberry.field(description="Line in the extract (header: 1).")
    account_id: str | None
    subscriber: str | None
    day: date | None
    legacy_amount: Money | None
    tollgate_amount: Money | None
    difference: Money | None = strawberry.field(
        description="Legacy minus Tollgate, after rounding Tollgate's amount to the extract's "
                    "unit.")
    detail: str


@strawberry.type
class VarianceEdge:
    cursor: str
    node: Variance


@strawberry.type
class VarianceConnection:
    edges: list[VarianceEdge]
    page_info: PageInfo


@strawberry.type
class VarianceCount:
    kind: CoreVarianceKind = strawberry.field(graphql_type=VarianceKind)
    count: int = strawberry.field(graphql_type=Long)


def _money(micros: int | None, currency: str | None) -> Money | None:
    return None if micros is None or not currency else Money(amount_micros=micros,
                                                             currency=currency)


def _variance(row: reconcile_repo.VarianceRow) -> Variance:
    return Variance(number=row.variance_no, kind=CoreVarianceKind(row.kind),
                    event_id=row.event_id, legacy_record_id=row.legacy_record_id,
                    legacy_line=row.legacy_line, account_id=row.account_id,
                    subscriber=row.subscriber, day=row.day,
                    legacy_amount=_money(row.legacy_amount_micros, row.currency),
                    tollgate_amount=_money(row.tollgate_amount_micros, row.currency),
                    difference=_money(row.difference_micros, row.currency), detail=row.detail)


@strawberry.type(description="One reconciliation of a legacy extract.")
class ReconciliationRun:
    id: uuid.UUID
    source: str = strawberry.field(description="File name of the legacy extract.")
    source_sha256: str
    totals_source: str | None
    period_start: datetime
    period_end: datetime
    amount_unit: str = strawberry.field(description="micro or minor.")
    tolerance_micros: int = strawberry.field(graphql_type=Long)
    tolerance_ppm: int = strawberry.field(graphql_type=Long)
    legacy_records: int = strawberry.field(graphql_type=Long)
    tollgate_records: int = strawberry.field(graphql_type=Long)
    matched: int = strawberry.field(graphql_type=Long)
    variance_count: int = strawberry.field(graphql_type=Long)
    started_at: datetime
    finished_at: datetime | None

    @strawberry.field(description="Variances by kind.")
    async def variance_counts(self, info: Info[Context, None]) -> list[VarianceCount]:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            counts = await reconcile_repo.variance_counts(conn, self.id)
        return [VarianceCount(kind=CoreVarianceKind(k), count=n) for k, n in counts.items()]

    @strawberry.field(description="The variances, in the run's order.")
    async def variances(self, info: Info[Context, None], first: int = 20,
                        after: str | None = None,
                        kind: CoreVarianceKind | None = None) -> VarianceConnection:
        limit = page_size(first)
        try:
            start = int(uncursor(after)[0]) if after else 0
        except ValueError as exc:
            raise graphql_error(Invalid("malformed cursor", field="after")) from exc
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            rows = await reconcile_repo.variances(conn, self.id, after=start, limit=limit + 1,
                                                  kind=kind.value if kind else None)
        edges = [VarianceEdge(cursor=cursor(str(r.variance_no)), node=_variance(r))
                 for r in rows[:limit]]
        return VarianceConnection(edges=edges, page_info=PageInfo(
            has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None))


def _run(row: reconcile_repo.RunRow) -> ReconciliationRun:
    return ReconciliationRun(
        id=row.run_id, source=row.source, source_sha256=row.source_sha256,
        totals_source=row.totals_source, period_start=row.period_start,
        period_end=row.period_end, amount_unit=row.amount_unit,
        tolerance_micros=row.tolerance_micros, tolerance_ppm=row.tolerance_ppm,
        legacy_records=row.legacy_records, tollgate_records=row.tollgate_records,
        matched=row.matched, variance_count=row.variances, started_at=row.started_at,
        finished_at=row.finished_at)


@strawberry.type
class ReconciliationRunEdge:
    cursor: str
    node: ReconciliationRun


@strawberry.type
class ReconciliationRunConnection:
    edges: list[ReconciliationRunEdge]
    page_info: PageInfo


@strawberry.type(description=ASSURANCE_DESCRIPTION)
class Assurance:
    @strawberry.field
    async def audit_chain(self, info: Info[Context, None]) -> AuditChain:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            head = await audit_repo.read_head(conn, info.context.tenant)
            pending = await audit_repo.pending_count(conn, info.context.tenant)
        return AuditChain(length=head.sequence if head else 0,
                          head_hash=head.hash.hex() if head else None, pending=pending)

    @strawberry.field(description="Reconciliation runs, newest first.")
    async def reconciliation_runs(self, info: Info[Context, None], first: int = 20,
                                  after: str | None = None) -> ReconciliationRunConnection:
        limit = page_size(first)
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            rows = await reconcile_repo.runs(conn, limit + 1, keyset(after))
        edges = [ReconciliationRunEdge(cursor=keyset_cursor(r.started_at, r.run_id),
                                       node=_run(r)) for r in rows[:limit]]
        return ReconciliationRunConnection(edges=edges, page_info=PageInfo(
            has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None))

    @strawberry.field
    async def reconciliation_run(self, info: Info[Context, None],
                                 id: uuid.UUID) -> ReconciliationRun | None:
        async with tenant_tx(info.context.pool, info.context.tenant, readonly=True) as conn:
            row = await reconcile_repo.get_run(conn, id)
        return None if row is None else _run(row)


async def resolve_assurance(info: Info[Context, None]) -> Assurance:
    """Admins only: variances name accounts and amounts across the whole tenant."""
    if "admin" not in info.context.principal.roles:
        raise graphql_error(Forbidden("revenue assurance needs the admin role"))
    return Assurance()
