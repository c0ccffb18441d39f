"""The operator under the ServiceAccount and RBAC its chart renders, against the real authorizer.

`charts/tollgate-operator` is rendered with helm in both of its modes (cluster-wide, and
namespaced through `watchNamespaces`); its ServiceAccount, ClusterRoles, Roles, bindings and
Kopf peering object (not the Deployment) are applied to the session's kube-apiserver, which
runs with `--authorization-mode=RBAC`. The operator then runs in this process, authenticated
by a bound token of that ServiceAccount, with the chart's default peering mode (mandatory),
and must take a Tenant (external database), an Offer and a PartnerAgreement all the way:
children created, Tenant Ready, Offer Published, partner Ready with its API-key Secret, a
deleted Deployment repaired, and the Offer and Tenant finalizers released on deletion, all
without one permission error in its logs. The same identity is refused Secrets outside the
tenant namespace, cluster-wide included. A negative control runs the chart minus one rule and
must see the refusal: so the clean log above means something.

Names are random; everything created is deleted at the end (cluster-scoped RBAC included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Servers
from tests.harness.controlplane import ControlPlane, cache_root, ensure_helm_kubectl
from tests.operator.operator_fixtures import (
    GROUP_PATH,
    OperatorThread,
    await_tenant_ready,
    condition,
    create,
    create_database_secret,
    eventually,
    get,
    get_resource,
    offer_document,
    operator_settings,
    partner_document,
    tenant_document,
)
from tollgate_core.resources.offer import LifecycleStatus
from tollgate_core.store import catalog_repo
from tollgate_core.store.db import Pool, tenant_tx
from tollgate_operator.settings import PeeringMode, PeeringSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_CHART = ROOT / "charts" / "tollgate-operator"
PEERING_CRDS = OPERATOR_CHART / "crds" / "kopf.dev_peerings.yaml"
PEERING_CRD_NAMES = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
# What the chart installs for the operator's identity, minus the Deployment, Services, CRDs.
APPLIED_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "ClusterKopfPeering", "KopfPeering")
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering")
MODES = ("cluster-wide", "namespaced")
# A permission problem, however Kopf or the operator words it.
PERMISSION = re.compile(r"\b403\b|forbidden|not enough permissions", re.IGNORECASE)
HANDLER_FAILURE = re.compile(r"failed with an exception|failed permanently")
NAMESPACE_IN_PATH = re.compile(r"/namespaces/([a-z0-9-]+)/")
LEGACY = {"mode": "reconcile", "extractsClaim": "legacy-files"}

Document = dict[str, Any]


# --------------------------------------------------------------------------- helm


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path  # HELM_*_HOME, so the tests never touch the user's helm state

    def template(self, release: str, namespace: str, *args: str) -> list[Document]:
        env = dict(os.environ, HELM_CACHE_HOME=str(self.home / "cache"),
                   HELM_CONFIG_HOME=str(self.home / "config"),
                   HELM_DATA_HOME=str(self.home / "data"))
        proc = subprocess.run(
            [str(self.binary), "template", release, str(OPERATOR_CHART), "--namespace",
             namespace, *args], capture_output=True, text=True, timeout=120, env=env,
            check=False)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary, _ = ensure_helm_kubectl(cache_root() / "tools")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


# --------------------------------------------------------------------------- peering CRDs


def _crd_state(cp: ControlPlane, name: str) -> str:
    """'absent', 'terminating' or 'present'."""
    body = get(cp, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    if body is None:
        return "absent"
    return "terminating" if body["metadata"].get("deletionTimestamp") else "present"


@pytest.fixture(scope="module")
def peering_crds(control_plane: ControlPlane) -> Iterator[None]:
    """Kopf's peering CRDs, as the chart's crds/ folder installs them.

    The chart's default peering mode is `mandatory`: the operator must find its peering
    object, and the RBAC must let it keep its keep-alive there. Applied unless served (waiting
    out a deletion another module started), removed again by whoever applied them, so other
    modules keep running standalone.
    """
    cp = control_plane
    deadline = time.monotonic() + 60
    while any(_crd_state(cp, n) == "terminating" for n in PEERING_CRD_NAMES):
        assert time.monotonic() < deadline, "peering CRDs still terminating after 60 s"
        time.sleep(0.2)
    created = any(_crd_state(cp, n) == "absent" for n in PEERING_CRD_NAMES)
    if created:
        cp.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f",
                   str(PEERING_CRDS))
    try:
        yield
    finally:
        if created:
            cp.kubectl("delete", "--wait=false", "--ignore-not-found", "-f", str(PEERING_CRDS),
                       check=False)


# --------------------------------------------------------------------------- the installation


@dataclass(frozen=True)
class Installation:
    """The chart's identity for the operator, applied in `system`, serving `market`."""

    mode: str
    fullname: str  # of every chart object, and the peering name
    system: str  # the release namespace: the ServiceAccount lives here
    market: str  # the Tenant's namespace
    kubeconfig: Path  # authenticates as the ServiceAccount

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.system}:{self.fullname}"


def _namespace(cp: ControlPlane, name: str) -> None:
    cp.api("POST", "/api/v1/namespaces",
           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def _chart_args(mode: str, fullname: str, market: str) -> list[str]:
    args = ["--set", f"fullnameOverride={fullname}", "--set", "peering.mode=mandatory"]
    if mode == "namespaced":
        return [*args, "--set", f"watchNamespaces={{{market}}}"]
    return [*args, "--set", f"rbac.tenantNamespaces={{{market}}}"]


@contextlib.contextmanager
def _install(cp: ControlPlane, helm: Helm, servers: Servers, mode: str,
             drop: tuple[str, str] | None = None) -> Iterator[Installation]:
    """Render and apply the chart's identity for the operator; delete it all afterwards.

    `drop` = (ClusterRole name suffix, resource) removes that resource from the role's
    rules: the negative control, proving a missing grant is seen.
    """
    prefix = f"tgrbac{secrets.token_hex(3)}"
    fullname = f"{prefix}-{'cw' if mode == 'cluster-wide' else 'ns'}"
    system, market = f"{prefix}-system", f"{prefix}-market"
    for namespace in (system, market):
        _namespace(cp, namespace)
    documents = [doc for doc in helm.template("tollgate-operator", system,
                                              *_chart_args(mode, fullname, market))
                 if doc["kind"] in APPLIED_KINDS]
    kinds = {doc["kind"] for doc in documents}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding"} <= kinds, kinds
    if drop is not None:
        suffix, resource = drop
        (role,) = [d for d in documents if d["kind"] == "ClusterRole"
                   and d["metadata"]["name"].endswith(suffix)]
        before = len(role["rules"])
        role["rules"] = [r for r in role["rules"] if resource not in r["resources"]]
        assert len(role["rules"]) == before - 1, f"no rule for {resource} in {suffix}"
    cluster_scoped = [d for d in documents if d["kind"] in CLUSTER_SCOPED]
    try:
        manifest = yaml.safe_dump_all(documents, sort_keys=False)
        cp.kubectl("apply", "--server-side", "--field-manager=tollgate-rbac-tests", "-f", "-",
                   input=manifest)
        # The platform engineer's part: the external database's Secret in the tenant namespace.
        create_database_secret(cp, market, servers.app_dsn, servers.owner_dsn)
        # A bound token of the chart's ServiceAccount (TokenRequest API), in a kubeconfig.
        kubeconfig = cp.kubeconfig_for_service_account(system, fullname)
        yield Installation(mode, fullname, system, market, kubeconfig)
    finally:
        if cluster_scoped:
            cp.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                       input=yaml.safe_dump_all(cluster_scoped), check=False)
        cp.kubectl("delete", "namespace", "--wait=false", system, market, check=False)


@pytest.fixture(params=MODES)
def installation(request: pytest.FixtureRequest, control_plane: ControlPlane, helm: Helm,
                 peering_crds: None, servers: Servers) -> Iterator[Installation]:
    with _install(control_plane, helm, servers, str(request.param)) as inst:
        yield inst


# --------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class Problem:
    namespace: str | None
    text: str


class ProblemLog(logging.Handler):
    """Warnings and errors of every logger (Kopf's, the operator's) while the operator runs."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[Problem] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name} {record.levelname}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f" | {type(exc).__name__}: {exc}"
        ref = getattr(record, "k8s_ref", None)
        namespace = ref.get("namespace") if isinstance(ref, dict) else None
        if namespace is None and (match := NAMESPACE_IN_PATH.search(text)):
            namespace = match.group(1)
        self.records.append(Problem(namespace, text))

    def matching(self, pattern: re.Pattern[str], namespaces: tuple[str, ...]) -> list[str]:
        """Records matching `pattern` about these namespaces, or about no namespace at all.

        A cluster-wide operator on the shared test API server also sees resources other
        modules left in their namespaces, where this chart grants nothing: a refusal there is
        the least privilege working, not a missing grant.
        """
        return [p.text for p in self.records
                if pattern.search(p.text) and p.namespace in (None, *namespaces)]


@pytest.fixture
def problems() -> Iterator[ProblemLog]:
    handler = ProblemLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# --------------------------------------------------------------------------- helpers


def _children(tenant: str, namespace: str) -> list[str]:
    core, apps = f"/api/v1/namespaces/{namespace}", f"/apis/apps/v1/namespaces/{namespace}"
    policy = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
    netpol = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    paths = [f"{core}/serviceaccounts/{tenant}-tollgate", f"{core}/configmaps/{tenant}-config",
             f"{core}/secrets/{tenant}-credentials", f"{netpol}/{tenant}-default-deny"]
    for component in ("charging", "billing", "api"):
        paths += [f"{apps}/deployments/{tenant}-{component}",
                  f"{core}/services/{tenant}-{component}", f"{policy}/{tenant}-{component}"]
    # legacy.mode reconcile (LEGACY below): the sync CronJob, whose Jobs the operator lists
    paths.append(f"/apis/batch/v1/namespaces/{namespace}/cronjobs/{tenant}-legacy")
    return paths


def _published(cp: ControlPlane, kind: str, namespace: str, name: str, type_: str) -> int | None:
    body = get_resource(cp, kind, namespace, name)
    if condition(body, type_).get("status") != "True":
        return None
    key = "publishedRevision" if kind == "Offer" else "activeRevision"
    return int((body or {})["status"][key])


def _settings(inst: Installation) -> Settings:
    """The operator as the chart runs it, authenticated as the chart's ServiceAccount."""
    return dataclasses.replace(
        operator_settings(inst.kubeconfig, () if inst.mode == "cluster-wide" else (inst.market,)),
        # the chart's default: the peering object it installs is mandatory
        peering=PeeringSettings(mode=PeeringMode.MANDATORY, name=inst.fullname, priority=100))


def _as_service_account(cp: ControlPlane, inst: Installation, *args: str
                        ) -> subprocess.CompletedProcess[str]:
    return cp.kubectl(*args, kubeconfig=inst.kubeconfig, check=False)


# --------------------------------------------------------------------------- the test


async def test_operator_converges_under_the_charts_service_account_and_rbac(
        control_plane: ControlPlane, installation: Installation, problems: ProblemLog,
        pool: Pool, tenant_name: str) -> None:
    cp, inst = control_plane, installation
    ns = inst.market

    # The identity really is the ServiceAccount, and it is refused Secrets beyond its tenants.
    whoami = _as_service_account(cp, inst, "auth", "whoami", "-o",
                                 "jsonpath={.status.userInfo.username}")
    assert whoami.stdout.strip() == inst.user, whoami.stderr
    everywhere = _as_service_account(cp, inst, "get", "secrets", "--all-namespaces")
    assert everywhere.returncode != 0 and "forbidden" in everywhere.stderr.lower(), (
        f"{inst.mode}: the operator may list Secrets cluster-wide:\n{everywhere.stdout}")
    own = _as_service_account(cp, inst, "get", "secrets", "-n", inst.system)
    assert own.returncode != 0 and "forbidden" in own.stderr.lower(), own.stdout
    tenants = _as_service_account(cp, inst, "get", "secrets", "-n", ns, "-o", "name")
    assert tenants.returncode == 0 and "secret/tenant-db" in tenants.stdout, tenants.stderr

    started = time.monotonic()
    with OperatorThread(_settings(inst)):
        print(f"\n[timing] {inst.mode}: operator ready in {time.monotonic() - started:.2f}s")

        started = time.monotonic()
        create(cp, tenant_document(tenant_name, ns, legacy=LEGACY))
        paths = _children(tenant_name, ns)
        await eventually(lambda: all(get(cp, p) for p in paths), "all children exist", 30)
        print(f"[timing] {inst.mode}: Tenant -> children in {time.monotonic() - started:.2f}s")
        await await_tenant_ready(cp, ns, tenant_name)
        print(f"[timing] {inst.mode}: Tenant -> Ready in {time.monotonic() - started:.2f}s")

        started = time.monotonic()
        create(cp, offer_document("mobile-s", ns, tenant_name))
        revision = await eventually(
            lambda: _published(cp, "Offer", ns, "mobile-s", "Published"), "Offer Published")
        print(f"[timing] {inst.mode}: Offer -> Published in {time.monotonic() - started:.2f}s")
        async with tenant_tx(pool, tenant_name) as conn:
            stored = await catalog_repo.latest_revision(conn, tenant_name)
        assert stored is not None and stored.revision >= revision
        assert "mobile-s" in stored.source.offers

        # A Secret the operator creates (the partner's API key), owned by the agreement.
        create(cp, partner_document("streamflix", ns, tenant_name, ["mobile-s"]))
        await eventually(lambda: _published(cp, "PartnerAgreement", ns, "streamflix", "Ready"),
                         "PartnerAgreement Ready")
        assert get(cp, f"/api/v1/namespaces/{ns}/secrets/streamflix-api-key")

        # Drift repair needs the watch of Deployments and apply.
        path = f"/apis/apps/v1/namespaces/{ns}/deployments/{tenant_name}-api"
        before = get(cp, path)
        assert before is not None
        cp.api("DELETE", path)
        await eventually(lambda: (get(cp, path) or {}).get("metadata", {}).get("uid")
                         not in (None, before["metadata"]["uid"]), "Deployment re-created")

        # Finalizers: retiring the Offer, releasing the Tenant.
        cp.api("DELETE", f"{GROUP_PATH}/namespaces/{ns}/offers/mobile-s")
        await eventually(lambda: get_resource(cp, "Offer", ns, "mobile-s") is None,
                         "Offer gone (finalizer released)")
        async with tenant_tx(pool, tenant_name) as conn:
            retired = await catalog_repo.latest_revision(conn, tenant_name)
        assert retired is not None
        assert retired.source.offers["mobile-s"].lifecycle_status is LifecycleStatus.RETIRED
        cp.api("DELETE", f"{GROUP_PATH}/namespaces/{ns}/tenants/{tenant_name}")
        await eventually(lambda: get_resource(cp, "Tenant", ns, tenant_name) is None,
                         "Tenant gone (finalizer released)")

        # Kopf's keep-alive reached the chart's peering object.
        peering = (f"/apis/kopf.dev/v1/clusterkopfpeerings/{inst.fullname}"
                   if inst.mode == "cluster-wide"
                   else f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{inst.fullname}")
        body = get(cp, peering)
        assert body is not None and body.get("status"), f"no keep-alive in {peering}: {body}"

    mine = (ns, inst.system)
    denied = problems.matching(PERMISSION, mine)
    assert not denied, f"{inst.mode}: permission errors:\n" + "\n".join(denied)
    failed = problems.matching(HANDLER_FAILURE, mine)
    assert not failed, f"{inst.mode}: handlers failed:\n" + "\n".join(failed)
    foreign = [p for p in problems.records if p.namespace not in (None, *mine)]
    if foreign:
        print(f"[note] {inst.mode}: {len(foreign)} warnings about other modules' namespaces")



async def test_a_missing_grant_is_refused_and_reported(
        control_plane: ControlPlane, helm: Helm, peering_crds: None, servers: Servers,
        problems: ProblemLog, tenant_name: str) -> None:
    """The negative control: the chart minus one rule (NetworkPolicies) does not suffice.

    The authorizer refuses the operator's apply, the Tenant never gets its NetworkPolicy nor
    a Ready condition, and the refusal reaches the log the test above requires to be clean.
    """
    cp = control_plane
    with _install(cp, helm, servers, "namespaced",
                  drop=("-workloads", "networkpolicies")) as inst:
        ns = inst.market
        with OperatorThread(_settings(inst)):
            create(cp, tenant_document(tenant_name, ns))
            denied = await eventually(
                lambda: [t for t in problems.matching(PERMISSION, (ns,))
                         if "networkpolicies" in t], "the refused apply is logged")
            assert "403" in denied[0], denied[0]
            netpol = f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"
            assert get(cp, f"{netpol}/{tenant_name}-default-deny") is None
            tenant = get_resource(cp, "Tenant", ns, tenant_name)
            assert condition(tenant, "Ready").get("status") != "True", tenant
            cp.api("DELETE", f"{GROUP_PATH}/namespaces/{ns}/tenants/{tenant_name}")
            await eventually(lambda: get_resource(cp, "Tenant", ns, tenant_name) is None,
                             "Tenant gone (finalizer released)")
