"""Bad input is refused with a reason and nothing is lost: dead letters, CLI apply errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from tests.conftest import Servers
from tests.factories import dump_yaml, install_example_catalog, offer_document, usage_payload
from tests.integration.test_walking_skeleton import MSISDN, register_and_order
from tests.running import Api, StartEngine, eventually
from tollgate_core import catalog_service
from tollgate_core.resources import Offer, parse_resource
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx

TOLLGATE = Path(sys.executable).parent / "tollgate"


def dead_lettered(tenant: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("tollgate_usage_events_dead_lettered_total",
                                      {"tenant": tenant, "reason": reason})
    return value or 0.0


async def test_malformed_usage_is_dead_lettered_with_its_reason_and_counted(
        api: Api, pool: Pool, js: JetStreamContext, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    await register_and_order(api, api.token(tenant_name))
    dlq = await js.subscribe(f"tg.{tenant_name}.dlq.usage", stream="DLQ")
    await charging(tenant_name)
    subject = f"tg.{tenant_name}.usage.data"

    _, unknown = usage_payload(tenant_name, "499999999999", 100)
    _, float_quantity = usage_payload(tenant_name, MSISDN, 100)
    float_quantity = float_quantity.replace(b'"quantity": 100', b'"quantity": 1.5')
    good_id, good = usage_payload(tenant_name, MSISDN, 100)
    await js.publish(subject, b"{not json", headers={"Nats-Msg-Id": "garbage-1"})
    await js.publish(subject, unknown, headers={"Nats-Msg-Id": "unknown-1"})
    await js.publish(subject, float_quantity, headers={"Nats-Msg-Id": "float-1"})
    await js.publish(subject, good, headers={"Nats-Msg-Id": good_id})

    reasons = {}
    for _ in range(3):
        msg = await dlq.next_msg(timeout=20)
        assert msg.headers is not None
        reasons[msg.headers["Tollgate-Reason"]] = msg.headers["Tollgate-Detail"]
        await msg.ack()
    assert set(reasons) == {"MALFORMED_JSON", "UNKNOWN_SUBSCRIBER", "INVALID_EVENT"}
    assert reasons["INVALID_EVENT"] == "data.quantity: wrong type float"
    assert dead_lettered(tenant_name, "MALFORMED_JSON") == 1

    # The engine kept going: the good event behind the bad ones is rated.
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        async def good_rated() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) FROM rated_usage WHERE tenant_id = $1", tenant_name))

        await eventually(good_rated)
        rows = await conn.fetch("SELECT event_id, reason, payload FROM dead_letters"
                                " WHERE tenant_id = $1 ORDER BY reason", tenant_name)
    finally:
        await conn.close()
    assert [(r["event_id"], r["reason"]) for r in rows] == [
        ("float-1", "INVALID_EVENT"), ("garbage-1", "MALFORMED_JSON"),
        (json.loads(unknown)["id"], "UNKNOWN_SUBSCRIBER")]
    assert rows[1]["payload"] == b"{not json"
    await dlq.unsubscribe()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOLLGATE), *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "COLUMNS": "200"})


def test_apply_refuses_an_invalid_offer_naming_file_field_and_rule(tmp_path: Path) -> None:
    offer = offer_document("de", "broken", prices=[{
        "name": "data", "priceType": "usage",
        "usage": {"service": "data", "unit": "bytes",
                  "tiers": [{"from": 0, "to": 100, "unitPrice": "1"},
                            {"from": 200, "unitPrice": "0.5"}]}}])
    path = tmp_path / "offer.yaml"
    path.write_text(dump_yaml(offer))
    result = run_cli("apply", "-f", str(path), "--home", str(tmp_path / "home"))
    assert result.returncode == 1
    assert (f"{path}: spec.prices.0.usage: Value error, tiers: must be contiguous (each `from`"
            " equals the previous `to`), at tiers[1]" in result.stderr), result.stderr


def test_apply_refuses_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: Offer\nspec: [unclosed\n")
    result = run_cli("apply", "-f", str(path), "--home", str(tmp_path / "home"))
    assert result.returncode == 1
    assert f"{path}: not valid YAML" in result.stderr


async def test_an_invalid_offer_never_disturbs_the_published_catalog(
        pool: Pool, tenant_name: str) -> None:
    revision = await install_example_catalog(pool, tenant_name)
    resource = parse_resource(offer_document(tenant_name, "orphan", kind="addon",
                                             eligibility={"requires": ["mobile-xxl"]}))
    assert isinstance(resource, Offer)
    result = await catalog_service.apply_offer(pool, tenant_name, "orphan", resource.spec)
    assert result.errors == ["Offer orphan: spec.eligibility.requires[0]: offer 'mobile-xxl' "
                             "does not exist"]
    async with tenant_tx(pool, tenant_name) as conn:
        latest = await catalog_repo.latest_revision(conn, tenant_name)
    assert latest is not None
    assert latest.revision == revision
    assert "orphan" not in latest.source.offers


async def test_a_dead_letter_is_rated_after_its_cause_is_fixed_and_it_is_redriven(
        api: Api, pool: Pool, js: JetStreamContext, servers: Servers, charging: StartEngine,
        tenant_name: str) -> None:
    from tollgate_core.store.redrive import redrive

    await install_example_catalog(pool, tenant_name)
    await charging(tenant_name)
    event_id, payload = usage_payload(tenant_name, MSISDN, 1024)
    await js.publish(f"tg.{tenant_name}.usage.data", payload, headers={"Nats-Msg-Id": event_id})

    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        async def reason() -> str | None:
            value: str | None = await conn.fetchval(
                "SELECT reason FROM dead_letters WHERE tenant_id = $1 AND event_id = $2"
                " AND redriven_at IS NULL", tenant_name, event_id)
            return value

        async def dead_lettered() -> bool:
            return await reason() == "UNKNOWN_SUBSCRIBER"

        await eventually(dead_lettered)
        await register_and_order(api, api.token(tenant_name))  # the line now exists
        assert await redrive(pool, tenant_name, f"charging-{tenant_name}") == 1

        async def rated() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) FROM rated_usage WHERE tenant_id = $1 AND event_id = $2",
                tenant_name, uuid.UUID(event_id)))

        await eventually(rated)
        assert await reason() is None  # no open dead letter remains
        assert await redrive(pool, tenant_name, f"charging-{tenant_name}") == 0
    finally:
        await conn.close()
