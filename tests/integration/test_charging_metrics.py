"""`tollgate charging` serves Prometheus metrics on its metrics port, as its Deployment expects.

The real command runs as a child process (real PostgreSQL and NATS), rates usage, dead-letters
what it cannot rate and answers online charging requests; the test then scrapes `/metrics`
over HTTP and reads the exact counts of its own tenant.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Servers
from tests.factories import usage_payload
from tests.integration.test_online_charging import LINE, MIB, prepaid_line
from tests.running import eventually
from tollgate_core.observability import metrics_endpoint
from tollgate_core.store.db import Pool

TOLLGATE = Path(sys.executable).parent / "tollgate"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fetch(url: str) -> tuple[str, str]:
    """(content type, body) of a GET."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (http://127.0.0.1)
        return str(response.headers["Content-Type"]), response.read().decode()


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def engine_process(servers: Servers, tenant_name: str, tmp_path: Path
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`tollgate charging` for the test's tenant with /metrics on a free port."""
    port = free_port()
    log = tmp_path / "charging.log"
    env = dict(os.environ, TOLLGATE_DATABASE_URL=servers.app_dsn,
               TOLLGATE_NATS_URL=servers.nats_url, TOLLGATE_TENANT=tenant_name)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TOLLGATE), "charging", "--metrics-port", str(port),
             "--metrics-host", "127.0.0.1"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}/metrics", proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def request(nc: Client, tenant: str, operation: str, payload: bytes) -> dict[str, Any]:
    reply = await nc.request(f"tg.{tenant}.charge.{operation}", payload, timeout=30)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_charging_serves_prometheus_metrics_of_what_it_did(
        pool: Pool, nats_client: Client, js: JetStreamContext, tenant_name: str,
        engine_process: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    url, proc, log = engine_process
    tenant = tenant_name
    await prepaid_line(pool, tenant, "1.00")

    # Usage for the engine to consume: three events of 1 MiB (0.01 EUR each), one for a line
    # nobody has (dead-lettered as UNKNOWN_SUBSCRIBER).
    for subscriber in (LINE, LINE, LINE, "499999999999"):
        event_id, payload = usage_payload(tenant, subscriber, MIB)
        await js.publish(f"tg.{tenant}.usage.data", payload, headers={"Nats-Msg-Id": event_id})

    # Online charging: the first answer also says the command is up.
    reserve = json.dumps({"sessionId": "m1", "requestNumber": 0, "subscriber": LINE,
                          "service": "data", "units": MIB}).encode()
    granted: dict[str, Any] = {}

    async def answered() -> bool:
        assert proc.poll() is None, f"tollgate charging exited:\n{log.read_text()}"
        try:
            granted.update(await request(nats_client, tenant, "reserve", reserve))
        except NoRespondersError:
            return False
        return True

    await eventually(answered, deadline_s=60)
    assert granted["result"] == "SUCCESS", granted
    unknown = json.dumps({"sessionId": "m2", "requestNumber": 0, "subscriber": "499999999999",
                          "service": "data", "units": MIB}).encode()
    assert (await request(nats_client, tenant, "reserve", unknown))["result"] == "USER_UNKNOWN"
    assert (await request(nats_client, tenant, "commit", b"[1]"))["result"] == "INVALID_REQUEST"
    committed = await request(nats_client, tenant, "commit", json.dumps(
        {"reservationId": granted["reservationId"], "usedUnits": MIB}).encode())
    assert committed["result"] == "SUCCESS", committed

    scraped: Samples = {}

    async def all_usage_handled() -> bool:
        content_type, text = await asyncio.to_thread(fetch, url)
        assert content_type.startswith("text/plain"), content_type
        scraped.clear()
        scraped.update(parse(text))
        handled = (value(scraped, "tollgate_usage_events_rated_total", tenant=tenant)
                   + value(scraped, "tollgate_usage_events_dead_lettered_total", tenant=tenant,
                           reason="UNKNOWN_SUBSCRIBER"))
        return handled >= 4

    await eventually(all_usage_handled, deadline_s=60)
    assert value(scraped, "tollgate_usage_events_rated_total", tenant=tenant) == 3
    assert value(scraped, "tollgate_usage_events_dead_lettered_total", tenant=tenant,
                 reason="UNKNOWN_SUBSCRIBER") == 1
    assert value(scraped, "tollgate_usage_events_duplicate_total", tenant=tenant) == 0
    batches = value(scraped, "tollgate_charging_batch_seconds_count", tenant=tenant)
    assert batches >= 1
    assert value(scraped, "tollgate_charging_batch_seconds_bucket", tenant=tenant,
                 le="+Inf") == batches
    assert value(scraped, "tollgate_charging_batch_seconds_sum", tenant=tenant) > 0
    online = {(dict(labels)["operation"], dict(labels)["result"]): v
              for (name, labels), v in scraped.items()
              if name == "tollgate_online_requests_total" and ("tenant", tenant) in labels}
    assert online == {("reserve", "SUCCESS"): 1, ("reserve", "USER_UNKNOWN"): 1,
                      ("commit", "INVALID_REQUEST"): 1, ("commit", "SUCCESS"): 1}
    assert value(scraped, "tollgate_online_request_seconds_count", tenant=tenant,
                 operation="reserve") == 2
    # The process's own collectors come along (the default registry).
    assert value(scraped, "process_resident_memory_bytes") > 0

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()


async def test_engines_of_one_process_share_one_endpoint_until_the_last_leaves() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    async with metrics_endpoint("127.0.0.1", port):
        async with metrics_endpoint("127.0.0.1", port):  # a second tenant's engine
            assert "tollgate_usage_events_rated" in (await asyncio.to_thread(fetch, url))[1]
        assert "tollgate_usage_events_rated" in (await asyncio.to_thread(fetch, url))[1]
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(fetch, url)
    async with metrics_endpoint("127.0.0.1", None):  # None: nothing served
        with pytest.raises(urllib.error.URLError):
            await asyncio.to_thread(fetch, url)
