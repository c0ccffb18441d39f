"""GraphQL-over-HTTP conformance, judged by the `graphql-http` audit suite from npm (the
reference implementation's own server audits) run by Node.js against the real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.harness.node import script
from tests.running import Api


def _describe(results: list[dict[str, Any]]) -> str:
    return "\n".join(f"  [{r['id']}] {r['name']}: {r.get('reason')} (HTTP {r.get('httpStatus')}"
                     f", body {str(r.get('body'))[:200]!r})" for r in results)


async def test_every_graphql_http_audit_passes(api: Api, npm_modules: Path,
                                               tenant_name: str) -> None:
    async with script(npm_modules, "audit.mjs", api.url, api.token(tenant_name)) as node:
        out, err = await asyncio.wait_for(node.communicate(), 120)
    assert node.returncode == 0, err.decode()
    results: list[dict[str, Any]] = json.loads(out)
    levels = {r["name"].split(" ", 1)[0] for r in results}
    assert levels == {"MUST", "SHOULD", "MAY"} and len(results) >= 50, results  # it really ran

    musts = [r for r in results if r["name"].startswith("MUST") and r["status"] != "ok"]
    shoulds = [r for r in results if r["name"].startswith("SHOULD") and r["status"] != "ok"]
    mays = [r for r in results if r["name"].startswith("MAY") and r["status"] != "ok"]
    assert not musts, "MUST audits failing:\n" + _describe(musts)
    assert not shoulds, "SHOULD audits failing:\n" + _describe(shoulds)
    assert not mays, "MAY audits failing (we implement all of them):\n" + _describe(mays)
