"""Small builders of test data: example resources re-pointed at a test's own tenant."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tollgate_core.domain.usage import USAGE_EVENT_TYPE
from tollgate_core.local.apply import apply_resources, load_documents
from tollgate_core.resources import Offer, PartnerAgreement, Tenant, parse_resource
from tollgate_core.store.db import Pool

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_resources(tenant: str) -> list[Tenant | Offer | PartnerAgreement]:
    """The example catalog with the tenant renamed to `tenant`."""
    resources: list[Tenant | Offer | PartnerAgreement] = []
    for resource in load_documents(EXAMPLES):
        document = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        if document["kind"] == "Tenant":
            document["metadata"]["name"] = tenant
        else:
            document["spec"]["tenantRef"]["name"] = tenant
        parsed = parse_resource(document)
        assert isinstance(parsed, Tenant | Offer | PartnerAgreement)
        resources.append(parsed)
    return resources


async def install_example_catalog(pool: Pool, tenant: str) -> int:
    report = await apply_resources(pool, example_resources(tenant))
    assert not report.errors, report.errors
    return report.revisions[tenant]


def offer_document(tenant: str, name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"tenantRef": {"name": tenant}, "displayName": name}
    base.update(spec)
    return {"apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Offer",
            "metadata": {"name": name}, "spec": base}


def usage_payload(tenant: str, subscriber: str, quantity: int, *, service: str = "data",
                  unit: str = "bytes", event_id: str | None = None,
                  start_time: datetime | None = None) -> tuple[str, bytes]:
    event_id = event_id or str(uuid.uuid4())
    when = (start_time or datetime.now(UTC)).isoformat()
    body = {"specversion": "1.0", "id": event_id, "source": "test", "type": USAGE_EVENT_TYPE,
            "time": when, "tenant": tenant,
            "data": {"subscriber": subscriber, "service": service, "quantity": quantity,
                     "unit": unit, "startTime": when, "attributes": {}}}
    return event_id, json.dumps(body).encode()


def dump_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False)
