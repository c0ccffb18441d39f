"""Payments, credit notes and dunning: every money movement a ledger transfer with an
idempotent id; documents are never edited, only their settlement state moves."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date

from tollgate_core.billing.run import TAX_ACCOUNT, bill_no, series_for
from tollgate_core.domain.billing import (
    BillPeriod,
    DocumentKind,
    allocate,
    legs,
    outstanding,
)
from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.ledger import (
    PAYMENT_FUNDING_ACCOUNT,
    Transfer,
    TransferCode,
    customer_account,
    revenue_account,
    transfer_id,
)
from tollgate_core.domain.money import div_round_half_even, round_to_minor
from tollgate_core.observability import DUNNING_ACTIONS, PAYMENTS_APPLIED
from tollgate_core.store import billing_repo, catalog_repo, outbox, rating_repo
from tollgate_core.store.db import Connection, Pool, tenant_tx

ADJUSTMENTS_ACCOUNT = revenue_account("adjustments")
_OPEN = ("issued", "partiallyPaid", "overdue")


class BillingError(ValueError):
    """A request billing refuses; the message names the field and the rule."""


def settlement_state(total: int, paid: int, credited: int, overdue: bool) -> str:
    if outstanding(total, paid, credited) <= 0:
        return "paid"
    if overdue:
        return "overdue"
    return "partiallyPaid" if paid + credited > 0 else "issued"


@dataclass(frozen=True, slots=True)
class PaymentResult:
    payment_id: str
    applied: list[tuple[uuid.UUID, int]]
    unapplied_micros: int
    duplicate: bool


async def record_payment(pool: Pool, tenant: str, payment_id: str, customer_id: uuid.UUID,
                         amount_micros: int, method: str = "bankTransfer") -> PaymentResult:
    """Credit the customer with a payment and settle their open invoices, oldest due first.

    The payment id (from the payment gateway) makes a repeat harmless."""
    if amount_micros <= 0:
        raise BillingError("amountMicros: must be positive")
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        assert spec is not None
        account = customer_account(str(customer_id))
        locked = await rating_repo.lock_balances(conn, [account])
        if account not in locked:
            raise BillingError(f"customerId: no customer {customer_id}")
        inserted = await conn.fetchval(
            "INSERT INTO payments (tenant_id, payment_id, customer_id, amount_micros, currency,"
            " method) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
            tenant, payment_id, customer_id, amount_micros, spec.currency, method)
        if not inserted:
            rows = await conn.fetch(
                "SELECT a.invoice_id, a.amount_micros FROM payment_allocations a JOIN invoices i"
                " USING (tenant_id, invoice_id) WHERE a.payment_id = $1"
                " ORDER BY i.due_date, i.number", payment_id)
            applied = [(r["invoice_id"], r["amount_micros"]) for r in rows]
            return PaymentResult(payment_id, applied,
                                 amount_micros - sum(a for _, a in applied), True)
        await rating_repo.post_transfers(conn, tenant, [Transfer(
            transfer_id(f"payment:{payment_id}", "credit"), PAYMENT_FUNDING_ACCOUNT, account,
            amount_micros, spec.currency, TransferCode.PAYMENT, payment_id)])
        open_rows = await conn.fetch(
            "SELECT invoice_id, total_micros, paid_micros, credited_micros, state FROM invoices"
            " WHERE customer_id = $1 AND state = ANY($2::text[]) ORDER BY due_date, number"
            " FOR UPDATE", customer_id, list(_OPEN))
        by_id = {r["invoice_id"]: r for r in open_rows}
        applied = allocate(amount_micros, [
            (r["invoice_id"], outstanding(r["total_micros"], r["paid_micros"],
                                          r["credited_micros"])) for r in open_rows])
        events = []
        for invoice_id, amount in applied:
            r = by_id[invoice_id]
            state = settlement_state(r["total_micros"], r["paid_micros"] + amount,
                                     r["credited_micros"], r["state"] == "overdue")
            await conn.execute(
                "UPDATE invoices SET paid_micros = paid_micros + $2, state = $3"
                " WHERE invoice_id = $1", invoice_id, amount, state)
            events.append(DomainEvent.new(tenant, "invoice.updated", {
                "invoiceId": str(invoice_id), "customerId": str(customer_id), "state": state,
                "paidMicros": r["paid_micros"] + amount}))
        if applied:
            await conn.execute(
                "INSERT INTO payment_allocations (tenant_id, payment_id, invoice_id,"
                " amount_micros) SELECT $1, $2, * FROM unnest($3::uuid[], $4::bigint[])",
                tenant, payment_id, [i for i, _ in applied], [a for _, a in applied])
        events.append(DomainEvent.new(tenant, "payment.received", {
            "paymentId": payment_id, "customerId": str(customer_id),
            "amountMicros": amount_micros, "currency": spec.currency}))
        events += await _resume_if_clear(conn, tenant, customer_id)
        await outbox.enqueue(conn, events)
    PAYMENTS_APPLIED.labels(tenant).inc()
    return PaymentResult(payment_id, applied, amount_micros - sum(a for _, a in applied), False)


@dataclass(frozen=True, slots=True)
class CreditNote:
    credit_note_id: str
    bill_no: str
    invoice_id: uuid.UUID
    net_micros: int
    tax_micros: int


async def credit_invoice(pool: Pool, tenant: str, credit_note_id: str, invoice_id: uuid.UUID,
                         gross_micros: int, reason: str) -> CreditNote:
    """Issue a credit note against an invoice: never an edit of the invoice. The credited
    gross is split into net and tax in the invoice's own proportion (tax rounded half-even
    to the minor unit); a repeat of the same credit note id returns the first one."""
    if gross_micros <= 0:
        raise BillingError("grossMicros: must be positive")
    async with tenant_tx(pool, tenant) as conn:
        existing = await conn.fetchrow(
            "SELECT bill_no, invoice_id, net_micros, tax_micros FROM credit_notes"
            " WHERE credit_note_id = $1", credit_note_id)
        if existing is not None:
            return CreditNote(credit_note_id, existing["bill_no"], existing["invoice_id"],
                              existing["net_micros"], existing["tax_micros"])
        spec = await catalog_repo.get_tenant(conn, tenant)
        assert spec is not None
        inv = await conn.fetchrow(
            "SELECT customer_id, kind, total_micros, tax_micros, paid_micros, credited_micros,"
            " state, currency, period_start, period_end FROM invoices WHERE invoice_id = $1"
            " FOR UPDATE", invoice_id)
        if inv is None:
            raise BillingError(f"invoiceId: no invoice {invoice_id}")
        if inv["kind"] != DocumentKind.INVOICE.value:
            raise BillingError("invoiceId: only invoices can be credited, not statements")
        creditable = inv["total_micros"] - inv["credited_micros"]
        if gross_micros > creditable:
            raise BillingError(f"grossMicros: at most {creditable} can still be credited")
        currency = inv["currency"]
        tax = round_to_minor(div_round_half_even(gross_micros * inv["tax_micros"],
                                                 inv["total_micros"]), currency) \
            if inv["total_micros"] else 0
        net = gross_micros - tax
        series, prefix = series_for(spec, DocumentKind.INVOICE)
        number = await billing_repo.take_numbers(conn, tenant, f"{series}:creditNote", 1)
        period = BillPeriod(inv["period_start"], inv["period_end"])
        note_no = bill_no(f"{prefix}-CN", period, number)
        await conn.execute(
            "INSERT INTO credit_notes (tenant_id, credit_note_id, series, number, bill_no,"
            " invoice_id, reason, net_micros, tax_micros) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8, $9)", tenant, credit_note_id, f"{series}:creditNote", number, note_no,
            invoice_id, reason, net, tax)
        account = customer_account(str(inv["customer_id"]))
        moves = legs(ADJUSTMENTS_ACCOUNT, account, net, "net") + \
            legs(TAX_ACCOUNT, account, tax, "tax")
        await rating_repo.post_transfers(conn, tenant, [
            Transfer(transfer_id(f"creditNote:{credit_note_id}", name), d, c, m, currency,
                     TransferCode.CREDIT_NOTE, credit_note_id) for d, c, m, name in moves])
        state = settlement_state(inv["total_micros"], inv["paid_micros"],
                                 inv["credited_micros"] + gross_micros,
                                 inv["state"] == "overdue") \
            if inv["state"] in _OPEN else inv["state"]
        await conn.execute("UPDATE invoices SET credited_micros = credited_micros + $2,"
                           " state = $3 WHERE invoice_id = $1", invoice_id, gross_micros, state)
        await outbox.enqueue(conn, [DomainEvent.new(tenant, "creditNote.issued", {
            "creditNoteId": credit_note_id, "billNo": note_no, "invoiceId": str(invoice_id),
            "customerId": str(inv["customer_id"]), "netMicros": net, "taxMicros": tax,
            "currency": currency, "reason": reason}),
            *await _resume_if_clear(conn, tenant, inv["customer_id"])])
    return CreditNote(credit_note_id, note_no, invoice_id, net, tax)


@dataclass
class DunningResult:
    overdue: int = 0
    reminders: int = 0
    suspended: int = 0


async def run_dunning(pool: Pool, tenant: str, today: date) -> DunningResult:
    """Mark invoices past due as overdue, send each reminder once (`evt.invoice.reminder`),
    and suspend the subscriptions of accounts overdue longer than the tenant allows."""
    result = DunningResult()
    async with tenant_tx(pool, tenant) as conn:
        spec = await catalog_repo.get_tenant(conn, tenant)
        assert spec is not None
        rows = await conn.fetch(
            "SELECT invoice_id, customer_id, bill_no, due_date, state, reminders_sent,"
            " total_micros - paid_micros - credited_micros AS open_micros FROM invoices"
            " WHERE state = ANY($1::text[]) AND due_date < $2 ORDER BY customer_id, due_date"
            " FOR UPDATE", list(_OPEN), today)
        events: list[DomainEvent] = []
        to_suspend: set[uuid.UUID] = set()
        for r in rows:
            days = (today - r["due_date"]).days
            if r["state"] != "overdue":
                await conn.execute("UPDATE invoices SET state = 'overdue' WHERE invoice_id = $1",
                                   r["invoice_id"])
                result.overdue += 1
                events.append(DomainEvent.new(tenant, "invoice.overdue", {
                    "invoiceId": str(r["invoice_id"]), "billNo": r["bill_no"],
                    "customerId": str(r["customer_id"]), "openMicros": r["open_micros"]}))
            due_reminders = sum(1 for d in spec.billing.reminder_days if days >= d)
            if due_reminders > r["reminders_sent"]:
                await conn.execute("UPDATE invoices SET reminders_sent = $2 WHERE invoice_id = $1",
                                   r["invoice_id"], due_reminders)
                for level in range(r["reminders_sent"] + 1, due_reminders + 1):
                    result.reminders += 1
                    events.append(DomainEvent.new(tenant, "invoice.reminder", {
                        "invoiceId": str(r["invoice_id"]), "billNo": r["bill_no"],
                        "customerId": str(r["customer_id"]), "level": level,
                        "daysOverdue": days, "openMicros": r["open_micros"]}))
            if days >= spec.billing.suspend_after_days:
                to_suspend.add(r["customer_id"])
        for customer_id in sorted(to_suspend):
            suspended = await conn.fetch(
                "UPDATE subscriptions SET status = 'suspended' WHERE customer_id = $1"
                " AND status = 'active' RETURNING subscription_id", customer_id)
            if suspended:
                result.suspended += 1
                events.append(DomainEvent.new(tenant, "customer.suspended", {
                    "customerId": str(customer_id),
                    "subscriptionIds": [str(s["subscription_id"]) for s in suspended]}))
        await outbox.enqueue(conn, events)
    for action, count in (("overdue", result.overdue), ("reminder", result.reminders),
                          ("suspended", result.suspended)):
        DUNNING_ACTIONS.labels(tenant, action).inc(count)
    return result


async def _resume_if_clear(conn: Connection, tenant: str, customer_id: uuid.UUID
                           ) -> list[DomainEvent]:
    """Suspended for debt, resumed once nothing is overdue any more."""
    still_overdue = await conn.fetchval(
        "SELECT count(*) FROM invoices WHERE customer_id = $1 AND state = 'overdue'",
        customer_id)
    if still_overdue:
        return []
    resumed = await conn.fetch(
        "UPDATE subscriptions SET status = 'active' WHERE customer_id = $1"
        " AND status = 'suspended' RETURNING subscription_id", customer_id)
    if not resumed:
        return []
    DUNNING_ACTIONS.labels(tenant, "resumed").inc()
    return [DomainEvent.new(tenant, "customer.resumed", {
        "customerId": str(customer_id),
        "subscriptionIds": [str(s["subscription_id"]) for s in resumed]})]
