"""Double-entry ledger values: accounts, transfers and their idempotent ids.

Every movement is one transfer from a debit account to a credit account. An account's balance is
credits minus debits, so the balances of a currency always sum to zero. A transfer id is derived
from what caused it (event id and leg), so applying the same cause twice changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

_TRANSFER_NAMESPACE = uuid.UUID("6f2b8a52-3c1e-4f7a-9d1b-7a0c1e5d2b90")


class AccountKind(StrEnum):
    CUSTOMER = "customer"  # a customer's balance: positive is prepaid credit, negative is owed
    REVENUE = "revenue"
    TAX_PAYABLE = "taxPayable"
    PARTNER_PAYABLE = "partnerPayable"
    PROMOTION_EXPENSE = "promotionExpense"
    RECEIVABLE = "receivable"
    FUNDING = "funding"  # money entering from outside (payments, top-ups)


class TransferCode(StrEnum):
    """Why a transfer happened."""

    USAGE = "usage"
    USAGE_OVERAGE = "usageOverage"
    TOP_UP = "topUp"
    RECURRING = "recurring"
    ONE_TIME = "oneTime"
    PARTNER_SHARE = "partnerShare"  # a partner's revenue share of a rated record
    PARTNER_MINIMUM = "partnerMinimumGuarantee"  # statement top-up to the minimum guarantee
    PARTNER_CAP = "partnerCap"  # statement clawback down to the cap
    INVOICE = "invoice"  # recurring, one-time, discount, tax and rounding legs of a document
    PAYMENT = "payment"
    CREDIT_NOTE = "creditNote"
    NETWORK_API = "networkApi"  # a partner's metered network API call (ADR 0015)
    PARTNER_NETTING = "partnerNetting"  # statement: API charges set off against the payable


def customer_account(customer_id: str) -> str:
    return f"customer:{customer_id}"


def overage_account(customer_id: str) -> str:
    """Receivable for usage a prepaid balance could not cover (collected later)."""
    return f"receivable:{customer_id}"


def revenue_account(component: str) -> str:
    return f"revenue:{component}"


TOP_UP_FUNDING_ACCOUNT = "funding:topups"
PAYMENT_FUNDING_ACCOUNT = "funding:payments"


def transfer_id(cause_id: str, leg: str) -> uuid.UUID:
    """Deterministic transfer id: the same cause and leg always give the same id."""
    return uuid.uuid5(_TRANSFER_NAMESPACE, f"{cause_id}/{leg}")


@dataclass(frozen=True, slots=True)
class Transfer:
    id: uuid.UUID
    debit_account: str
    credit_account: str
    amount_micros: int
    currency: str
    code: TransferCode
    cause_id: str

    def __post_init__(self) -> None:
        assert self.amount_micros > 0, "a transfer moves a positive amount"
        assert self.debit_account != self.credit_account, "a transfer moves between two accounts"


def split_prepaid(charge_micros: int, spendable_micros: int | None) -> tuple[int, int]:
    """Split a charge into (from the balance, to the receivable) so a prepaid balance never
    goes below its floor; `spendable_micros` None means no floor (postpaid)."""
    if spendable_micros is None:
        return charge_micros, 0
    from_balance = min(charge_micros, max(spendable_micros, 0))
    return from_balance, charge_micros - from_balance
