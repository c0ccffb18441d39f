"""Settlement statement runs: one immutable statement per (agreement, period).

A run for a period (a month or a day, in the tenant's timezone, already over) makes, for every
partner agreement of the tenant, its monthly statement or its daily statements (`daily` and
`realtime` agreements). Each statement is one transaction that:

1. takes the agreement's advisory lock and returns the stored statement if there is one
   (a rerun changes nothing);
2. claims the open accruals of the period (and late ones of periods already stated), and
   the partner's network API calls of the period by the same rule;
3. applies the minimum guarantee or the cap as a ledger transfer between `revenue:usage` and
   the partner payable account;
4. nets the network API charges against the share: one transfer from the payable to the
   partner's receivable clears what the calls debited (ADR 0012, 0015), so the payable
   holds the net, which the partner is paid or owes;
5. converts the figures to the partner's settlement currency at the caller's exact FX rate;
6. stores the statement with its JSON document and writes `settlement.statement` to the
   outbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from tollgate_core.domain.catalog import Catalog
from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.ledger import Transfer, TransferCode, transfer_id
from tollgate_core.domain.network_api import partner_receivable_account
from tollgate_core.domain.settlement import (
    AdjustmentKind,
    Period,
    SettlementError,
    ShareTerms,
    StatementHeader,
    compile_terms,
    decimal_text,
    local_day,
    parse_period,
    parse_rate,
    partner_payable_account,
    periods_for,
    render_statement,
    statement_figures,
    statement_id,
)
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.settlement.accruals import SHARED_REVENUE
from tollgate_core.store import outbox, rating_repo, settlement_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_core.store.settlement_repo import StatementRow

STATEMENT_EVENT = "settlement.statement"
_ADJUSTMENT_CODES = {AdjustmentKind.MINIMUM_GUARANTEE: TransferCode.PARTNER_MINIMUM,
                     AdjustmentKind.CAP: TransferCode.PARTNER_CAP}


@dataclass(frozen=True, slots=True)
class StatementResult:
    """The outcome for one (agreement, period): the statement document, whether this run
    made it, or why it could not be made."""

    agreement: str
    period: Period
    statement: dict[str, Any] | None = None
    created: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Terms:
    revision: int
    catalog: Catalog
    terms: ShareTerms


def _terms_at(cache: CatalogCache, agreement: str, when: datetime) -> _Terms | None:
    """The agreement as in the revision in force at `when`, or else its latest revision."""
    found = cache.at(when)
    candidates = ([found[0]] if found else []) + list(range(cache.latest, 0, -1))
    for revision in candidates:
        catalog = cache.get(revision)
        if catalog is not None and agreement in catalog.partners:
            return _Terms(revision, catalog,
                          compile_terms(agreement, catalog.partners[agreement]))
    return None


def _rate(terms: ShareTerms, currency: str, rates: Mapping[str, str]) -> Fraction:
    if terms.settlement_currency == currency:
        return Fraction(1)
    text = rates.get(terms.settlement_currency)
    if text is None:
        raise SettlementError(
            f"agreement {terms.agreement} settles in {terms.settlement_currency}, the tenant "
            f"in {currency}: give the rate, e.g. --rate {terms.settlement_currency}=1.0825 "
            f"({terms.settlement_currency} per {currency})")
    return parse_rate(text)


async def run_statements(pool: Pool, tenant: str, period: str, rates: Mapping[str, str],
                         *, agreements: Sequence[str] | None = None,
                         now: datetime | None = None) -> list[StatementResult]:
    """Make the statements of `period` ("2026-11" or "2026-11-05") for every agreement of the
    tenant (or those named); rates map a settlement currency to its exact rate per unit of
    the tenant currency. Statements already made are returned as they are."""
    asked = parse_period(period)
    for text in rates.values():
        parse_rate(text)  # refuse a malformed rate before anything is written
    cache = CatalogCache(tenant)
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        await cache.refresh(conn)
        latest = cache.get(cache.latest)
        if latest is None:
            raise SettlementError(f"tenant {tenant!r} has no catalog")
        today = local_day(now or datetime.now(UTC), latest.timezone)
        if today < asked.end:
            raise SettlementError(f"period {asked.label} is not over yet in "
                                  f"{latest.timezone} (it ends {asked.end.isoformat()})")
        names: set[str] = set(await settlement_repo.open_agreements(conn, asked.end))
    for revision in range(1, cache.latest + 1):
        catalog = cache.get(revision)
        names.update(catalog.partners if catalog else ())
    if agreements is not None:
        names &= set(agreements)
    _, end = asked.bounds(latest.timezone)
    results: list[StatementResult] = []
    for name in sorted(names):
        found = _terms_at(cache, name, end - timedelta(microseconds=1))
        if found is None:
            results.append(StatementResult(name, asked, error=f"agreement {name} is in no "
                                           "catalog revision"))
            continue
        for each in periods_for(found.terms.period, asked):
            _, each_end = each.bounds(latest.timezone)
            terms = _terms_at(cache, name, each_end - timedelta(microseconds=1)) or found
            try:
                results.append(await make_statement(pool, tenant, name, each, terms, rates))
            except SettlementError as exc:
                results.append(StatementResult(name, each, error=str(exc)))
    return results


async def make_statement(pool: Pool, tenant: str, agreement: str, period: Period,
                         found: _Terms, rates: Mapping[str, str]) -> StatementResult:
    catalog, terms = found.catalog, found.terms
    spec = catalog.partners[agreement]
    sid = statement_id(tenant, agreement, period)
    async with tenant_tx(pool, tenant) as conn:
        await settlement_repo.lock_agreement(conn, tenant, agreement)
        existing = await settlement_repo.find_statement(conn, agreement, period)
        if existing is not None:
            return StatementResult(agreement, period, existing, created=False)
        rate = _rate(terms, catalog.currency, rates)
        totals = await settlement_repo.claim_accruals(conn, agreement, period, sid)
        api, currencies = await settlement_repo.claim_calls(conn, agreement, period,
                                                            catalog.timezone, sid)
        if currencies - {catalog.currency}:
            raise SettlementError(
                f"agreement {agreement}: network API calls of {period.label} were charged in "
                f"{', '.join(sorted(currencies))}, the tenant now settles in "
                f"{catalog.currency}")  # rolls the claims back
        start, end = period.bounds(catalog.timezone)
        valid = terms.valid_during(start, end)
        if not valid and totals.records == 0 and api.calls == 0:
            return StatementResult(agreement, period)  # not in force and nothing to settle
        figures = statement_figures(terms, totals, rate, bounded=valid, api=api)
        transfers: list[Transfer] = []
        payable = partner_payable_account(agreement)
        if figures.adjustment_kind is not None:
            amount = figures.adjustment_micros
            debit, credit = (SHARED_REVENUE, payable) if amount > 0 else (payable, SHARED_REVENUE)
            transfers.append(Transfer(
                transfer_id(f"statement:{sid}", figures.adjustment_kind.value), debit, credit,
                abs(amount), catalog.currency, _ADJUSTMENT_CODES[figures.adjustment_kind],
                str(sid)))
        if figures.network_api_micros > 0:
            # Netting: the partner's network API charges come off what it is owed. The
            # receivable the calls debited is cleared; the payable keeps the net position
            # (negative: the partner owes the operator).
            transfers.append(Transfer(
                transfer_id(f"statement:{sid}", "networkApiNetting"), payable,
                partner_receivable_account(agreement), figures.network_api_micros,
                catalog.currency, TransferCode.PARTNER_NETTING, str(sid)))
        if transfers:
            await settlement_repo.ensure_payable_accounts(conn, tenant, [payable],
                                                          catalog.currency)
        issued_at = datetime.now(UTC)
        header = StatementHeader(tenant, sid, agreement, spec, period, catalog.timezone,
                                 found.revision, catalog.currency, issued_at)
        body = render_statement(header, terms, totals, figures, [t.id for t in transfers],
                                api)
        await settlement_repo.insert_statement(conn, tenant, StatementRow(
            statement_id=sid, agreement=agreement, partner_id=terms.partner_id, period=period,
            catalog_revision=found.revision, currency=catalog.currency,
            settlement_currency=terms.settlement_currency,
            fx_rate=None if terms.settlement_currency == catalog.currency
            else decimal_text(rate),
            records=totals.records, gross_micros=figures.gross_micros,
            share_micros=figures.share_micros, adjustment_micros=figures.adjustment_micros,
            adjustment_kind=figures.adjustment_kind.value if figures.adjustment_kind else None,
            payable_micros=figures.payable_micros,
            settled_gross_micros=figures.settled_gross_micros,
            settled_share_micros=figures.settled_share_micros,
            settled_payable_micros=figures.settled_payable_micros, body=body,
            issued_at=issued_at, network_api_calls=api.calls,
            network_api_micros=figures.network_api_micros,
            settled_network_api_micros=figures.settled_network_api_micros))
        await rating_repo.post_transfers(conn, tenant, transfers)
        await outbox.enqueue(conn, [DomainEvent.new(tenant, STATEMENT_EVENT, {
            "statementId": str(sid), "agreement": agreement, "partnerId": terms.partner_id,
            "period": body["period"], "records": totals.records,
            "payable": body["ledger"]["payable"],
            "settlementPayable": body["settlement"]["payable"],
            "adjustmentKind": body["ledger"]["adjustmentKind"],
            "networkApiCalls": api.calls,
            "networkApiCharges": body["ledger"]["networkApiCharges"],
            "net": body["ledger"]["net"], "settlementNet": body["settlement"]["net"],
            "netDirection": body["settlement"]["netDirection"]}, event_id=sid)])
    return StatementResult(agreement, period, body, created=True)


async def list_statements(pool: Pool, tenant: str, period: str,
                          agreement: str | None = None) -> list[dict[str, Any]]:
    """Stored statement documents whose period lies within `period`."""
    asked = parse_period(period)
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        return await settlement_repo.statements(conn, agreement=agreement,
                                                period_start=asked.start,
                                                period_end=asked.end)
