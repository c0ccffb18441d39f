"""Payments settle invoices oldest first, credit notes adjust without editing, dunning marks
overdue, reminds once per level, suspends and resumes — all as ledger transfers."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from tests.billing.test_bill_run import TZ, customers, ledger_check, period_for
from tests.conftest import Servers
from tests.factories import install_example_catalog
from tollgate_core.billing.payments import BillingError, credit_invoice, record_payment, run_dunning
from tollgate_core.billing.run import bill_run
from tollgate_core.domain.billing import local_midnight
from tollgate_core.store.db import Pool, tenant_tx


async def one_invoice(pool: Pool, tenant: str) -> tuple[uuid.UUID, asyncpg.Record]:
    await install_example_catalog(pool, tenant)
    period = await period_for(pool, tenant)
    ((customer, _),) = await customers(pool, tenant, 1, local_midnight(period.start, TZ))
    await bill_run(pool, tenant, period)
    async with tenant_tx(pool, tenant) as conn:
        row = await conn.fetchrow("SELECT * FROM invoices")
    assert row is not None
    return customer, row


async def state_of(pool: Pool, tenant: str) -> tuple[str, int, int]:
    async with tenant_tx(pool, tenant) as conn:
        row = await conn.fetchrow("SELECT state, paid_micros, credited_micros FROM invoices")
    assert row is not None
    return row["state"], row["paid_micros"], row["credited_micros"]


async def test_payments_settle_the_invoice_and_repeat_harmlessly(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    customer, invoice = await one_invoice(pool, tenant_name)
    total = invoice["total_micros"]
    assert total == 2 * 19_990_000  # this period + next, in advance
    part = await record_payment(pool, tenant_name, "pay-1", customer, 10_000_000)
    assert part.applied == [(invoice["invoice_id"], 10_000_000)]
    assert await state_of(pool, tenant_name) == ("partiallyPaid", 10_000_000, 0)
    repeat = await record_payment(pool, tenant_name, "pay-1", customer, 10_000_000)
    assert repeat.duplicate and await state_of(pool, tenant_name) == (
        "partiallyPaid", 10_000_000, 0)
    # Paying more than is open leaves the rest as credit on the account.
    rest = await record_payment(pool, tenant_name, "pay-2", customer, total)
    assert rest.unapplied_micros == 10_000_000
    assert await state_of(pool, tenant_name) == ("paid", total, 0)
    async with tenant_tx(pool, tenant_name) as conn:
        balance = await conn.fetchval("SELECT balance_micros FROM ledger_accounts"
                                      " WHERE account_id = $1", f"customer:{customer}")
    assert balance == 10_000_000
    assert await ledger_check(servers, tenant_name) == (0, 0)
    with pytest.raises(BillingError, match="amountMicros"):
        await record_payment(pool, tenant_name, "pay-3", customer, 0)


async def test_a_credit_note_reduces_what_is_due_without_editing_the_invoice(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    _, invoice = await one_invoice(pool, tenant_name)
    # Credit 11.90 gross of an invoice whose tax is 19 % included: tax share = 11.90 × tax /
    # total = 11.90 × 19/119 = 1.90 (the invoice's own proportion), net 10.00.
    note = await credit_invoice(pool, tenant_name, "cn-1", invoice["invoice_id"],
                                11_900_000, "goodwill: outage")
    assert (note.net_micros, note.tax_micros) == (10_000_000, 1_900_000)
    assert note.bill_no.startswith("DE-CN-")
    again = await credit_invoice(pool, tenant_name, "cn-1", invoice["invoice_id"],
                                 11_900_000, "goodwill: outage")
    assert again == note
    assert await state_of(pool, tenant_name) == ("partiallyPaid", 0, 11_900_000)
    async with tenant_tx(pool, tenant_name) as conn:
        total = await conn.fetchval("SELECT total_micros FROM invoices")
    assert total == invoice["total_micros"]  # the document itself never changes
    for edit in ("UPDATE invoices SET total_micros = 1, net_micros = 1, tax_micros = 0",
                 "UPDATE invoice_lines SET net_micros = 0", "DELETE FROM invoices",
                 "UPDATE credit_notes SET net_micros = 0"):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
            async with tenant_tx(pool, tenant_name) as conn:
                await conn.execute(edit)
    with pytest.raises(BillingError, match="grossMicros: at most"):
        await credit_invoice(pool, tenant_name, "cn-2", invoice["invoice_id"],
                             10**12, "too much")
    assert await ledger_check(servers, tenant_name) == (0, 0)


async def test_dunning_reminds_once_per_level_suspends_and_payment_resumes(
        pool: Pool, servers: Servers, tenant_name: str) -> None:
    customer, invoice = await one_invoice(pool, tenant_name)
    due = invoice["due_date"]
    assert due is not None
    # The DE example: reminders 3 and 10 days after the due date, suspension after 30.
    assert (await run_dunning(pool, tenant_name, due)).overdue == 0  # not yet past due
    first = await run_dunning(pool, tenant_name, due + timedelta(days=3))
    assert (first.overdue, first.reminders, first.suspended) == (1, 1, 0)
    again = await run_dunning(pool, tenant_name, due + timedelta(days=4))
    assert (again.overdue, again.reminders) == (0, 0)
    late = await run_dunning(pool, tenant_name, due + timedelta(days=31))
    assert (late.reminders, late.suspended) == (1, 1)
    async with tenant_tx(pool, tenant_name) as conn:
        status = await conn.fetchval("SELECT status FROM subscriptions")
        events = [r["subject"].rsplit(".", 2)[-2:] for r in await conn.fetch(
            "SELECT subject FROM outbox ORDER BY created_at")]
    assert status == "suspended"
    assert events.count(["invoice", "reminder"]) == 2
    assert ["customer", "suspended"] in events
    await record_payment(pool, tenant_name, "pay-all", customer,
                         invoice["total_micros"])
    async with tenant_tx(pool, tenant_name) as conn:
        assert await conn.fetchval("SELECT status FROM subscriptions") == "active"
        assert await conn.fetchval("SELECT state FROM invoices") == "paid"
    assert await ledger_check(servers, tenant_name) == (0, 0)
