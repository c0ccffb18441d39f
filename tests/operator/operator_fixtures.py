"""Factories and runners for operator tests: specs, documents, API helpers, the operator.

The operator runs either in a thread of this process (:class:`OperatorThread`, stopped
gracefully) or as a child process (:class:`OperatorProcess`, which a test may SIGKILL
mid-reconcile). Run ``python -m tests.operator.operator_fixtures SETTINGS.json`` to start the
latter by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tests.harness.controlplane import ApiError, ControlPlane
from tollgate_core.resources import TenantSpec
from tollgate_operator.main import operate, run
from tollgate_operator.manifests import Owner, TenantWorkload
from tollgate_operator.settings import PeeringMode, PeeringSettings, Settings

API_VERSION = "bss.tollgate.dev/v1alpha1"
GROUP_PATH = "/apis/bss.tollgate.dev/v1alpha1"
IMAGE = "example.invalid/tollgate:test"
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Document = dict[str, Any]


# --------------------------------------------------------------------------- specs


def tenant_spec(**overrides: Any) -> Document:
    """A small valid Tenant spec (camelCase, as in YAML); external database by default."""
    spec: Document = {
        "market": "DE", "currency": "EUR", "timezone": "Europe/Berlin", "locale": "de-DE",
        "taxes": [{"category": "standard", "rate": "19", "inclusive": True}],
        "charging": {"replicas": 1}, "api": {"replicas": 1},
        "database": {"mode": "external", "secretRef": "tenant-db"},
    }
    spec.update(overrides)
    return spec


def tenant_workload(name: str = "de", namespace: str = "market-de",
                    uid: str = "00000000-0000-4000-8000-000000000000", image: str = IMAGE,
                    **overrides: Any) -> TenantWorkload:
    owner = Owner(API_VERSION, "Tenant", name, uid)
    return TenantWorkload(owner, namespace, TenantSpec.model_validate(tenant_spec(**overrides)),
                          image)


def tenant_document(name: str, namespace: str, **overrides: Any) -> Document:
    return {"apiVersion": API_VERSION, "kind": "Tenant",
            "metadata": {"name": name, "namespace": namespace}, "spec": tenant_spec(**overrides)}


def offer_document(name: str, namespace: str, tenant: str, amount: str = "9.99",
                   **overrides: Any) -> Document:
    """A monthly plan with one recurring price."""
    spec: Document = {
        "tenantRef": {"name": tenant}, "displayName": name.title(), "kind": "plan",
        "prices": [{"name": "monthly-fee", "priceType": "recurring",
                    "recurring": {"amount": amount, "period": "month"}}],
    }
    spec.update(overrides)
    return {"apiVersion": API_VERSION, "kind": "Offer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def partner_document(name: str, namespace: str, tenant: str, offers: list[str]) -> Document:
    return {"apiVersion": API_VERSION, "kind": "PartnerAgreement",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"tenantRef": {"name": tenant},
                     "partner": {"id": name, "displayName": name.title(),
                                 "contactEmail": f"billing@{name}.example",
                                 "settlementCurrency": "EUR"},
                     "role": "contentProvider", "offerSelector": {"offers": offers},
                     "revenueShare": {"model": "percentage", "percent": "30"}}}


# --------------------------------------------------------------------------- API helpers


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_namespace(cp: ControlPlane, prefix: str) -> str:
    name = unique(prefix)
    cp.api("POST", "/api/v1/namespaces",
           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def create_database_secret(cp: ControlPlane, namespace: str, dsn: str, owner_dsn: str,
                           name: str = "tenant-db") -> None:
    """The external database Secret a platform engineer provides (see ADR 0006)."""
    cp.api("POST", f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"dsn": dsn, "ownerDsn": owner_dsn}})


def database_namespace(cp: ControlPlane, prefix: str, app_dsn: str, owner_dsn: str) -> str:
    """A fresh namespace holding the external database Secret its Tenants refer to."""
    name = create_namespace(cp, prefix)
    create_database_secret(cp, name, app_dsn, owner_dsn)
    return name


def plural(kind: str) -> str:
    return {"Tenant": "tenants", "Offer": "offers",
            "PartnerAgreement": "partneragreements"}[kind]


def create(cp: ControlPlane, document: Document) -> Document:
    namespace = document["metadata"]["namespace"]
    result: Document = cp.api(
        "POST", f"{GROUP_PATH}/namespaces/{namespace}/{plural(document['kind'])}", document)
    return result


def patch(cp: ControlPlane, kind: str, namespace: str, name: str, change: Document) -> None:
    cp.kubectl("patch", f"{plural(kind)}.bss.tollgate.dev", name, "-n", namespace,
               "--type=merge", "-p", json.dumps(change))


def get(cp: ControlPlane, path: str) -> Document | None:
    try:
        result: Document = cp.api("GET", path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return result


def get_resource(cp: ControlPlane, kind: str, namespace: str, name: str) -> Document | None:
    return get(cp, f"{GROUP_PATH}/namespaces/{namespace}/{plural(kind)}/{name}")


def condition(document: Document | None, type_: str) -> Document:
    for item in ((document or {}).get("status") or {}).get("conditions") or ():
        if item["type"] == type_:
            return dict(item)
    return {}


TENANT_CONDITIONS = ("Ready", "DatabaseReady", "ChargingReady", "BillingReady", "ApiReady",
                     "CatalogSynced")


def tenant_ready(cp: ControlPlane, namespace: str, tenant: str,
                 generation: int | None = None) -> bool:
    """Every Tenant condition True (and computed from `generation`, when given)."""
    body = get_resource(cp, "Tenant", namespace, tenant)
    return all(condition(body, c).get("status") == "True"
               and (generation is None or condition(body, c).get("observedGeneration")
                    == generation)
               for c in TENANT_CONDITIONS)


def tenant_diagnosis(cp: ControlPlane, namespace: str, tenant: str) -> str:
    """What held a Tenant back: its conditions, its Jobs, Deployments and Pods."""
    body = get_resource(cp, "Tenant", namespace, tenant) or {}
    lines = [f"Tenant generation {body.get('metadata', {}).get('generation')}: "
             f"{json.dumps((body.get('status') or {}).get('conditions'))}"]
    for path, kind in ((f"/apis/batch/v1/namespaces/{namespace}/jobs", "Job"),
                       (f"/apis/apps/v1/namespaces/{namespace}/deployments", "Deployment"),
                       (f"/api/v1/namespaces/{namespace}/pods", "Pod")):
        for item in cp.api("GET", path)["items"]:
            status = item.get("status") or {}
            lines.append(f"{kind} {item['metadata']['name']}: phase={status.get('phase')} "
                         f"conditions={json.dumps(status.get('conditions'))}")
    return "\n".join(lines)


async def await_tenant_ready(cp: ControlPlane, namespace: str, tenant: str,
                             generation: int | None = None, deadline_s: float = 60) -> None:
    """Wait for :func:`tenant_ready`; on timeout say what held the Tenant back."""
    try:
        await eventually(lambda: tenant_ready(cp, namespace, tenant, generation),
                         f"Tenant {namespace}/{tenant} Ready", deadline_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{tenant_diagnosis(cp, namespace, tenant)}") from exc


def events(cp: ControlPlane, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about object `name`."""
    items = cp.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    return [(e["type"], e["reason"], e.get("message", "")) for e in items
            if e["involvedObject"]["name"] == name]


async def eventually(check: Callable[[], T | None], what: str, deadline_s: float = 30.0,
                     interval_s: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail after the deadline."""

    async def call() -> T | None:
        return check()

    return await eventually_async(call, what, deadline_s, interval_s)


async def eventually_async(check: Callable[[], Awaitable[T | None]], what: str,
                           deadline_s: float = 30.0, interval_s: float = 0.05) -> T:
    """:func:`eventually` for an async check (e.g. a database query)."""
    end = time.monotonic() + deadline_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s}s: {what}")
        await asyncio.sleep(interval_s)


# --------------------------------------------------------------------------- operator


def operator_settings(kubeconfig: Path, namespaces: tuple[str, ...]) -> Settings:
    """Short intervals so tests see timers act; peering auto-detected (none installed here)."""
    return Settings(image=IMAGE, namespaces=namespaces, kubeconfig=kubeconfig,
                    peering=PeeringSettings(mode=PeeringMode.AUTO), resync_interval_s=2.0,
                    tenant_wait_s=1.0, revalidate_interval_s=2.0)


class OperatorThread:
    """The operator in a thread with its own event loop; stopped gracefully on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(operate(self.settings, stop_flag=self._stop, ready_flag=self._ready))
        except BaseException as exc:  # reported by __exit__/start
            self._error = exc

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(timeout=60) or self._error is not None:
            self.__exit__(None, None, None)
            raise RuntimeError(f"operator did not start: {self._error!r}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "operator thread did not stop within 30 s"


@dataclass(frozen=True)
class _ProcessSettings:
    kubeconfig: str
    namespaces: list[str]


class OperatorProcess:
    """The operator as a child process (`tollgate operator` minus the CLI); `kill()` is SIGKILL."""

    def __init__(self, kubeconfig: Path, namespaces: tuple[str, ...], log: Path) -> None:
        self._args = json.dumps(asdict(_ProcessSettings(str(kubeconfig), list(namespaces))))
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.operator.operator_fixtures", self._args],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no status writes, no finalizer bookkeeping."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _process_main(argv: list[str]) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = json.loads(argv[0])
    run(operator_settings(Path(options["kubeconfig"]), tuple(options["namespaces"])))


if __name__ == "__main__":
    _process_main(sys.argv[1:])
