"""Invoices and statements as documents: JSON named after TMF678 CustomerBill (and its
AppliedCustomerBillingRate lines), and human-readable HTML in the tenant's locale.

TMF678 carries money as {unit, value}; here `value` is an exact decimal string (never a float)
rounded to the currency's minor unit, as the document's lines are.
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from babel.dates import format_date
from babel.numbers import format_currency

from tollgate_core.domain.money import MICROS_PER_UNIT, currency_exponent
from tollgate_core.resources.tenant import TenantSpec
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx


@dataclass(frozen=True, slots=True)
class StoredDocument:
    head: dict[str, Any]
    lines: list[dict[str, Any]]
    spec: TenantSpec


async def load(pool: Pool, tenant: str, *, invoice_id: uuid.UUID | None = None,
               bill_no: str | None = None) -> StoredDocument | None:
    async with tenant_tx(pool, tenant, readonly=True) as conn:
        head = await conn.fetchrow(
            "SELECT * FROM invoices WHERE invoice_id = $1 OR bill_no = $2", invoice_id, bill_no)
        if head is None:
            return None
        lines = await conn.fetch("SELECT * FROM invoice_lines WHERE invoice_id = $1"
                                 " ORDER BY line_no", head["invoice_id"])
        spec = await catalog_repo.get_tenant(conn, tenant)
        assert spec is not None
    return StoredDocument(dict(head), [dict(r) for r in lines], spec)


def _decimal(micros: int, currency: str) -> Decimal:
    exponent = currency_exponent(currency)
    return (Decimal(micros) / MICROS_PER_UNIT).quantize(Decimal(1).scaleb(-exponent))


def _money(micros: int, currency: str) -> dict[str, str]:
    return {"unit": currency, "value": str(_decimal(micros, currency))}


def _period(start: date | None, end: date | None) -> dict[str, str] | None:
    if start is None or end is None:
        return None
    return {"startDateTime": start.isoformat(), "endDateTime": end.isoformat()}


def to_json(doc: StoredDocument) -> dict[str, Any]:
    h = doc.head
    cur = h["currency"]
    taxes: dict[tuple[str, str], list[int]] = {}
    for line in doc.lines:
        key = (line["tax_category"], line["tax_rate"])
        acc = taxes.setdefault(key, [0, 0])
        acc[0] += line["net_micros"]
        acc[1] += line["tax_micros"]
    return {
        "id": str(h["invoice_id"]),
        "@type": "CustomerBill",
        "category": "normal" if h["kind"] == "invoice" else "statement",
        "billNo": h["bill_no"],
        "billDate": h["bill_date"].isoformat(),
        "billingPeriod": _period(h["period_start"], h["period_end"]),
        "paymentDueDate": h["due_date"].isoformat() if h["due_date"] else None,
        "state": h["state"],
        "relatedParty": [{"id": str(h["customer_id"]), "role": "customer"}],
        "taxExcludedAmount": _money(h["net_micros"], cur),
        "taxIncludedAmount": _money(h["total_micros"], cur),
        "amountDue": _money(h["total_micros"], cur),
        "remainingAmount": _money(h["total_micros"] - h["paid_micros"] - h["credited_micros"],
                                  cur),
        "taxItem": [{"taxCategory": c, "taxRate": r, "taxAmount": _money(t, cur),
                     "taxableAmount": _money(n, cur)} for (c, r), (n, t) in sorted(taxes.items())],
        "rounding": f"each line half-even to {currency_exponent(cur)} decimals ({cur})",
        "appliedCustomerBillingRate": [{
            "id": f"{h['invoice_id']}-{line['line_no']}",
            "type": line["kind"],
            "name": line["description"],
            "product": {"id": str(line["subscription_id"]) if line["subscription_id"] else None,
                        "offer": line["offer"], "price": line["price_name"]},
            "catalogRevision": line["catalog_revision"],
            "quantity": line["quantity"],
            "periodCoverage": _period(line["coverage_start"], line["coverage_end"]),
            "taxExcludedAmount": _money(line["net_micros"], cur),
            "taxIncludedAmount": _money(line["net_micros"] + line["tax_micros"], cur),
            "appliedTax": [{"taxCategory": line["tax_category"], "taxRate": line["tax_rate"],
                            "taxAmount": _money(line["tax_micros"], cur),
                            "inclusive": line["tax_inclusive"]}],
        } for line in doc.lines],
    }


def to_html(doc: StoredDocument) -> str:
    """A printable document; amounts and dates formatted for the tenant's locale."""
    h = doc.head
    cur = h["currency"]
    locale = doc.spec.locale.replace("-", "_")

    def money(micros: int) -> str:
        return html.escape(format_currency(_decimal(micros, cur), cur, locale=locale))

    def day(value: date) -> str:
        return html.escape(format_date(value, format="medium", locale=locale))

    title = "Invoice" if h["kind"] == "invoice" else "Statement"
    rows = "\n".join(
        f"<tr><td>{html.escape(line['description'])}</td><td>{line['catalog_revision']}</td>"
        f"<td class=n>{money(line['net_micros'])}</td>"
        f"<td class=n>{html.escape(line['tax_rate'])} %</td>"
        f"<td class=n>{money(line['tax_micros'])}</td></tr>" for line in doc.lines)
    due = f"<p>Due: {day(h['due_date'])}</p>" if h["due_date"] else ""
    return f"""<!doctype html>
<html lang="{html.escape(doc.spec.locale)}"><head><meta charset="utf-8">
<title>{title} {html.escape(h['bill_no'])}</title>
<style>body{{font-family:sans-serif}} td.n{{text-align:right}} table{{border-collapse:collapse}}
td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}</style></head><body>
<h1>{title} {html.escape(h['bill_no'])}</h1>
<p>Date: {day(h['bill_date'])} · Period: {day(h['period_start'])} – {day(h['period_end'])}</p>
{due}<p>State: {html.escape(h['state'])}</p>
<table><thead><tr><th>Item</th><th>Catalog revision</th><th>Net</th><th>Tax rate</th>
<th>Tax</th></tr></thead><tbody>
{rows}
</tbody></table>
<p>Net: {money(h['net_micros'])}<br>Tax: {money(h['tax_micros'])}<br>
<strong>Total: {money(h['total_micros'])}</strong></p>
<p><small>Each line is rounded half-even to the currency's minor unit.</small></p>
</body></html>
"""
