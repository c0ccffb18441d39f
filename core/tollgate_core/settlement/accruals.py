"""Real-time partner accruals: called by offline rating and online commit, in their
transaction, with the records they rate.

For each record whose offer has valid partner agreements, the share is split exactly
(:func:`tollgate_core.domain.settlement.split_record`), an accrual row is written per
(record, agreement), and the share is returned as a ledger transfer `revenue:usage` →
`partnerPayable:<agreement>` (the other way round when the partner pays; another revenue
account when the caller says so, e.g. billing for recurring fees) with the idempotent id
`transfer_id(event_id, "share:<agreement>")`, for the caller to post with its own transfers.

Lock order: the caller has locked allowances, paid usage and customer accounts; this locks the
running gross of tiered agreements next, before the caller posts transfers (revenue and payable
accounts). Offline and online charging both follow it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tollgate_core.domain.catalog import Catalog
from tollgate_core.domain.ledger import Transfer, TransferCode, revenue_account, transfer_id
from tollgate_core.domain.settlement import (
    Revenue,
    ShareTerms,
    agreements_for_offer,
    compile_terms,
    local_day,
    month_of,
    partner_payable_account,
    split_record,
)
from tollgate_core.store import settlement_repo
from tollgate_core.store.db import Connection
from tollgate_core.store.rating_repo import RatedRow
from tollgate_core.store.settlement_repo import AccrualRow, GrossKey

SHARED_REVENUE = revenue_account("usage")
"""The revenue account rated usage is credited to; statement adjustments use it too."""


def revenue_of(row: RatedRow, offer: str) -> Revenue:
    """A rated record as shareable revenue: its charge, all its units (a per-unit fee is owed
    for units drawn from allowances too), its time and revision."""
    return Revenue(row.event_id, offer, row.amount_micros, row.quantity, row.start_time,
                   row.catalog_revision)


async def accrue(conn: Connection, tenant: str, catalogs: Callable[[int], Catalog | None],
                 items: Sequence[Revenue]) -> list[Transfer]:
    """Write the accruals of `items` and return the share transfers to post.

    Costs nothing (no statement) when no item's offer has an agreement valid at its time."""
    memo: dict[tuple[int, str], list[ShareTerms]] = {}
    planned: list[tuple[Revenue, Catalog, list[ShareTerms]]] = []
    for item in items:
        if item.gross_micros == 0 and item.units == 0:
            continue
        catalog = catalogs(item.catalog_revision)
        if catalog is None or not catalog.partners:
            continue
        key = (item.catalog_revision, item.offer)
        if key not in memo:
            memo[key] = [compile_terms(name, catalog.partners[name])
                         for name in agreements_for_offer(catalog, item.offer)]
        valid = [t for t in memo[key] if t.valid_at(item.when)]
        if valid:
            planned.append((item, catalog, valid))
    if not planned:
        return []
    running = await settlement_repo.lock_gross(conn, tenant, [
        (t.agreement, month_of(item.when, catalog.timezone))
        for item, catalog, terms in planned for t in terms if t.tiered])
    changed: set[GrossKey] = set()
    rows: list[AccrualRow] = []
    transfers: list[Transfer] = []
    for item, catalog, terms in planned:
        month = month_of(item.when, catalog.timezone)
        split = split_record(item.gross_micros, item.units, terms,
                             {t.agreement: running[(t.agreement, month)]
                              for t in terms if t.tiered})
        for t in terms:
            if t.tiered:
                running[(t.agreement, month)] += item.gross_micros
                changed.add((t.agreement, month))
        partner_ids = {t.agreement: t.partner_id for t in terms}
        for agreement, share in split.shares:
            if share == 0 and item.gross_micros == 0:
                continue  # moves no money
            rows.append(AccrualRow(
                item.event_id, agreement, partner_ids[agreement], item.catalog_revision,
                item.when, local_day(item.when, catalog.timezone), item.units,
                item.gross_micros, share, split.operator_micros, catalog.currency))
            if share:
                payable = partner_payable_account(agreement)
                revenue = item.revenue_account
                debit, credit = (revenue, payable) if share > 0 else (payable, revenue)
                transfers.append(Transfer(
                    transfer_id(str(item.event_id), f"share:{agreement}"), debit, credit,
                    abs(share), catalog.currency, TransferCode.PARTNER_SHARE,
                    str(item.event_id)))
    await settlement_repo.ensure_payable_accounts(
        conn, tenant, [partner_payable_account(r.agreement) for r in rows],
        planned[0][1].currency)
    await settlement_repo.insert_accruals(conn, tenant, rows)
    await settlement_repo.save_gross(conn, {k: running[k] for k in changed})
    return transfers
