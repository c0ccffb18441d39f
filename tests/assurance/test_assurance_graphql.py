"""The admins' GraphQL view of assurance (api/tollgate_api/assurance.py), mounted on a Query the
way schema.py mounts it, executed in process against the real database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import strawberry
from strawberry.schema.config import StrawberryConfig

from tests.assurance.helpers import post_transfers
from tests.assurance.test_reconcile_rules import seed_rules_case
from tollgate_api.assurance import ASSURANCE_DESCRIPTION, Assurance, resolve_assurance
from tollgate_api.auth import Principal
from tollgate_api.context import Context
from tollgate_api.live import EventHub
from tollgate_api.types import LONG_SCALAR, Long
from tollgate_core.assurance.chainer import chain_all
from tollgate_core.assurance.reconcile import reconcile
from tollgate_core.store.db import Pool


@strawberry.type
class Query:
    assurance: Assurance = strawberry.field(resolver=resolve_assurance,
                                            description=ASSURANCE_DESCRIPTION)


SCHEMA = strawberry.Schema(query=Query, config=StrawberryConfig(scalar_map={Long: LONG_SCALAR}))

RUNS = """
query ($first: Int!, $after: String, $kind: VarianceKind) {
  assurance {
    auditChain { length headHash pending }
    reconciliationRuns(first: 5) {
      edges { node {
        id source legacyRecords tollgateRecords matched varianceCount amountUnit
        varianceCounts { kind count }
        variances(first: $first, after: $after, kind: $kind) {
          edges { cursor node {
            number kind eventId legacyRecordId legacyLine accountId day detail
            legacyAmount { amountMicros amount currency }
            tollgateAmount { amountMicros currency }
            difference { amountMicros amount }
          } }
          pageInfo { hasNextPage endCursor }
        }
      } }
    }
  }
}"""


async def run(pool: Pool, tenant: str, roles: frozenset[str],
              variables: dict[str, Any]) -> Any:
    context = Context(pool=pool, hub=EventHub(), caller=Principal(tenant, "someone", roles))
    return await SCHEMA.execute(RUNS, variable_values=variables, context_value=context)


async def test_admins_see_runs_variances_and_the_chain(pool: Pool, tenant_name: str,
                                                       tmp_path: Path) -> None:
    _, records, totals = await seed_rules_case(pool, tenant_name, tmp_path)
    await post_transfers(pool, tenant_name, 3)
    await chain_all(pool, tenant_name)
    await post_transfers(pool, tenant_name, 2, start=10)  # captured, not chained yet
    result = await reconcile(pool, tenant_name, records, totals=totals)

    first = await run(pool, tenant_name, frozenset({"admin"}), {"first": 5})
    assert first.errors is None, first.errors
    data = first.data["assurance"]
    assert data["auditChain"]["length"] == 4  # the catalog revision and 3 transfers
    assert data["auditChain"]["pending"] == 2 and len(data["auditChain"]["headHash"]) == 64
    [edge] = data["reconciliationRuns"]["edges"]
    node = edge["node"]
    assert (node["id"], node["source"], node["legacyRecords"], node["matched"],
            node["varianceCount"], node["amountUnit"]) == (
        str(result.run_id), "records.csv", 11, 8, result.variances, "minor")
    assert {c["kind"]: c["count"] for c in node["varianceCounts"]} == result.by_kind
    page = node["variances"]
    assert [e["node"]["number"] for e in page["edges"]] == [1, 2, 3, 4, 5]
    assert page["pageInfo"]["hasNextPage"] is True

    rest = await run(pool, tenant_name, frozenset({"admin"}),
                     {"first": 100, "after": page["pageInfo"]["endCursor"]})
    numbers = [e["node"]["number"]
               for e in rest.data["assurance"]["reconciliationRuns"]["edges"][0]["node"][
                   "variances"]["edges"]]
    assert numbers == list(range(6, result.variances + 1))

    amounts = await run(pool, tenant_name, frozenset({"admin"}),
                        {"first": 10, "kind": "AMOUNT_DIFFERS"})
    nodes = [e["node"] for e in amounts.data["assurance"]["reconciliationRuns"]["edges"][0][
        "node"]["variances"]["edges"]]
    cent = next(n for n in nodes if n["legacyRecordId"] == "L3")
    assert cent["legacyAmount"] == {"amountMicros": 100_000, "amount": "0.1", "currency": "EUR"}
    assert cent["tollgateAmount"] == {"amountMicros": 90_000, "currency": "EUR"}
    assert cent["difference"] == {"amountMicros": 10_000, "amount": "0.01"}
    assert {n["kind"] for n in nodes} == {"AMOUNT_DIFFERS"} and len(nodes) == 2


async def test_only_admins_see_assurance(pool: Pool, tenant_name: str, tmp_path: Path) -> None:
    _, records, _ = await seed_rules_case(pool, tenant_name, tmp_path)
    await reconcile(pool, tenant_name, records)
    for roles in ({"agent"}, {"customer"}, {"partner"}):
        result = await run(pool, tenant_name, frozenset(roles), {"first": 5})
        assert result.data is None
        assert result.errors is not None
        assert result.errors[0].extensions is not None
        assert result.errors[0].extensions["code"] == "FORBIDDEN"
    other = await run(pool, tenant_name + "x", frozenset({"admin"}), {"first": 5})
    assert other.errors is None
    assert other.data["assurance"]["reconciliationRuns"]["edges"] == []
