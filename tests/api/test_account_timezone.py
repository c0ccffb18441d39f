"""An account's own timezone over real HTTP: set at registration (validated), shown on the
Customer, and the end of its bill cycle (a cancellation at the end of the period) follows it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.factories import install_example_catalog
from tests.running import Api
from tollgate_core.domain.care import bill_cycle_end
from tollgate_core.store.db import Pool

REGISTER = """
mutation Register($input: RegisterCustomerInput!, $key: String!) {
  registerCustomer(input: $input, idempotencyKey: $key) {
    __typename
    ... on RegisterCustomerSuccess { customer { id timezone hasOwnTimezone } }
    ... on ValidationError { field message }
    ... on ConflictError { field }
  }
}"""
ORDER = """
mutation Order($input: PlaceOrderInput!, $key: String!) {
  placeOrder(input: $input, idempotencyKey: $key) {
    ... on PlaceOrderSuccess { subscriptionId }
  }
}"""
CANCEL = """
mutation Cancel($id: UUID!, $key: String!) {
  cancelSubscription(subscriptionId: $id, effective: END_OF_PERIOD, idempotencyKey: $key) {
    ... on CancelSubscriptionSuccess { endsAt }
  }
}"""


async def test_an_account_bills_in_the_timezone_it_was_registered_with(
        api: Api, pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    agent = api.token(tenant_name)

    async def register(key: str, timezone: str | None) -> dict[str, Any]:
        extra = {} if timezone is None else {"timezone": timezone}
        body = await api.graphql(agent, REGISTER, {
            "input": {"name": "N", "email": f"{key}@example.com", **extra}, "key": key})
        result: dict[str, Any] = body["data"]["registerCustomer"]
        return result

    ny = await register("ny", "America/New_York")
    assert ny["__typename"] == "RegisterCustomerSuccess", ny
    customer = ny["customer"]
    assert (customer["timezone"], customer["hasOwnTimezone"]) == ("America/New_York", True)
    plain = (await register("plain", None))["customer"]
    assert (plain["timezone"], plain["hasOwnTimezone"]) == ("Europe/Berlin", False)

    for wrong in ("Mars/Olympus_Mons", "", "../../etc/passwd", "EST5EDT "):
        refused = await register(f"bad-{len(wrong)}", wrong)
        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == "timezone"
    # The same key with another timezone is another request.
    clash = await register("ny", "Asia/Tokyo")
    assert clash == {"__typename": "ConflictError", "field": "idempotencyKey"}

    # A cancellation at the end of the period ends the line at the start of the account's
    # next bill cycle: local midnight of the cycle day in New York.
    placed = await api.graphql(agent, ORDER, {"input": {
        "customerId": customer["id"], "offerId": "mobile-m", "subscriber": "491700000077"},
        "key": "o1"})
    before = datetime.now(UTC)
    cancelled = await api.graphql(agent, CANCEL, {
        "id": placed["data"]["placeOrder"]["subscriptionId"], "key": "c1"})
    ends = datetime.fromisoformat(cancelled["data"]["cancelSubscription"]["endsAt"])
    assert ends == bill_cycle_end(before, 1, "America/New_York")
    assert ends != bill_cycle_end(before, 1, "Europe/Berlin")
