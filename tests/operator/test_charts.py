"""The Helm charts: strict lint, rendering, and the rendered manifests on a real API server.

`charts/tollgate-operator` (CRDs, RBAC, the operator) and `charts/tollgate-market` (one Tenant
with its Offers and PartnerAgreements per release) are rendered with helm v4 and checked three
ways: statically (CRD copies, RBAC without wildcards or cluster-wide Secrets, restricted pod
security), by a server-side dry-run apply against the session's kube-apiserver (CRD schemas and
CEL rules, PodSecurity admission at `restricted`), and by SubjectAccessReviews against the real
RBAC authorizer. Everything this module creates on the shared API server has a random name and
is deleted at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.controlplane import ControlPlane, cache_root, ensure_helm_kubectl
from tollgate_core.resources import parse_resource

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_CHART = ROOT / "charts" / "tollgate-operator"
MARKET_CHART = ROOT / "charts" / "tollgate-market"
GENERATED_CRDS = ROOT / "crds"
CHART_CRDS = OPERATOR_CHART / "files" / "crds"
PEERING_CRDS = OPERATOR_CHART / "crds" / "kopf.dev_peerings.yaml"
MARKET_EXAMPLES = sorted((MARKET_CHART / "examples").glob("*.yaml"))
MARKETS = [path.stem for path in MARKET_EXAMPLES]
TOLLGATE_KINDS = ("Tenant", "Offer", "PartnerAgreement")
RESTRICTED = "restricted"
# Volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
})
SECRET_READ_VERBS = frozenset({"get", "list", "watch"})

Document = dict[str, Any]


# --------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path
    home: Path  # HOME/XDG dirs for helm and kubectl caches, so tests never touch the user's


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    helm, kubectl = ensure_helm_kubectl(cache_root() / "tools")
    return Tools(helm, kubectl, tmp_path_factory.mktemp("helm-home"))


def _run(
    tools: Tools, cmd: list[str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        HELM_CACHE_HOME=str(tools.home / "cache"),
        HELM_CONFIG_HOME=str(tools.home / "config"),
        HELM_DATA_HOME=str(tools.home / "data"),
        KUBECACHEDIR=str(tools.home / "kube-cache"),
    )
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=120, env=env, check=False
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def helm(tools: Tools, *args: str) -> str:
    return _ok(_run(tools, [str(tools.helm), *args]))


def render(tools: Tools, chart: Path, release: str, namespace: str, *args: str) -> list[Document]:
    """`helm template` (with the chart's crds/ folder) parsed into documents."""
    text = helm(tools, "template", release, str(chart), "--namespace", namespace,
                "--include-crds", *args)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_market(tools: Tools, market: str, namespace: str, *args: str) -> list[Document]:
    values = MARKET_CHART / "examples" / f"{market}.yaml"
    return render(tools, MARKET_CHART, market, namespace, "-f", str(values), *args)


def by_kind(documents: list[Document], *kinds: str) -> list[Document]:
    return [doc for doc in documents if doc.get("kind") in kinds]


# Operator chart values of its two modes: every namespace, or a list of namespaces.
MODES = {
    "cluster-wide": ["--set", "rbac.tenantNamespaces={market-de}"],
    "namespaced": ["--set", "watchNamespaces={market-de,market-jp}"],
}


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("mode", sorted(MODES))
def test_operator_chart_passes_strict_lint(tools: Tools, mode: str) -> None:
    out = helm(tools, "lint", "--strict", str(OPERATOR_CHART), *MODES[mode])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("market", MARKETS)
def test_market_chart_passes_strict_lint_with_each_example(tools: Tools, market: str) -> None:
    values = MARKET_CHART / "examples" / f"{market}.yaml"
    out = helm(tools, "lint", "--strict", str(MARKET_CHART), "-f", str(values))
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_market_chart_without_a_market_is_refused_with_the_missing_fields(tools: Tools) -> None:
    proc = _run(tools, [str(tools.helm), "template", "x", str(MARKET_CHART)])
    assert proc.returncode != 0
    assert "market" in proc.stderr and "currency" in proc.stderr, proc.stderr


@pytest.mark.parametrize("chart", [OPERATOR_CHART, MARKET_CHART], ids=lambda p: p.name)
def test_values_schema_refuses_a_misspelt_key(tools: Tools, chart: Path) -> None:
    values = ["-f", str(MARKET_EXAMPLES[0])] if chart == MARKET_CHART else []
    proc = _run(tools, [str(tools.helm), "template", "x", str(chart), *values,
                        "--set", "replicaCuont=1"])
    assert proc.returncode != 0
    assert "replicaCuont" in proc.stderr, proc.stderr


def test_operator_chart_runs_at_most_one_operator(tools: Tools) -> None:
    # Kopf peering pauses all operators of equal priority: two replicas would stall.
    proc = _run(tools, [str(tools.helm), "template", "x", str(OPERATOR_CHART),
                        "--set", "replicaCount=2"])
    assert proc.returncode != 0
    assert "replicaCount" in proc.stderr, proc.stderr
    (deployment,) = by_kind(render(tools, OPERATOR_CHART, "x", "ns"), "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


# --------------------------------------------------------------------------- CRDs


def test_operator_chart_crds_equal_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in GENERATED_CRDS.glob("*.yaml")}
    copied = {path.name: path.read_bytes() for path in CHART_CRDS.glob("*.yaml")}
    assert generated, f"no CRDs in {GENERATED_CRDS}: run `make crds`"
    stale = sorted(name for name in generated.keys() | copied.keys()
                   if generated.get(name) != copied.get(name))
    assert not stale, (
        f"{CHART_CRDS.relative_to(ROOT)} differs from crds/ ({', '.join(stale)}): run `make crds`"
    )


def test_rendered_crds_are_the_generated_ones_kept_on_uninstall(tools: Tools) -> None:
    rendered = {
        doc["metadata"]["name"]: doc
        for doc in by_kind(render(tools, OPERATOR_CHART, "x", "ns"), "CustomResourceDefinition")
    }
    for path in sorted(GENERATED_CRDS.glob("*.yaml")):
        generated = yaml.safe_load(path.read_text())
        crd = rendered.pop(generated["metadata"]["name"])
        assert crd["spec"] == generated["spec"], f"{path.name}: the chart renders another schema"
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # What remains are Kopf's peering CRDs, from the chart's crds/ folder.
    assert sorted(rendered) == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]


def test_crds_install_false_leaves_the_tollgate_crds_out(tools: Tools) -> None:
    documents = render(tools, OPERATOR_CHART, "x", "ns", "--set", "crds.install=false")
    names = [doc["metadata"]["name"] for doc in by_kind(documents, "CustomResourceDefinition")]
    assert not [name for name in names if name.endswith(".bss.tollgate.dev")]


def test_crds_keep_false_drops_the_keep_annotation(tools: Tools) -> None:
    documents = render(tools, OPERATOR_CHART, "x", "ns", "--set", "crds.keep=false")
    tollgate = [doc for doc in by_kind(documents, "CustomResourceDefinition")
                if doc["metadata"]["name"].endswith(".bss.tollgate.dev")]
    assert len(tollgate) == len(list(GENERATED_CRDS.glob("*.yaml")))
    assert all("annotations" not in doc["metadata"] for doc in tollgate)


def _spec_schema(kind: str) -> Document:
    for path in GENERATED_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            schema: Document = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return dict(schema["properties"]["spec"])
    raise AssertionError(f"no CRD of kind {kind} in {GENERATED_CRDS}")


def test_market_values_schema_lists_exactly_the_crd_spec_fields() -> None:
    schema = json.loads((MARKET_CHART / "values.schema.json").read_text())
    props = schema["properties"]
    entry = "additionalProperties"
    values_specs = {
        "Tenant": props["tenant"]["properties"]["spec"],
        "Offer": props["offers"][entry]["properties"]["spec"],
        "PartnerAgreement": props["partnerAgreements"][entry]["properties"]["spec"],
    }
    for kind, values_spec in values_specs.items():
        crd_spec = _spec_schema(kind)
        crd_types = {name: p["type"] for name, p in crd_spec["properties"].items()}
        values_types = {name: p["type"] for name, p in values_spec["properties"].items()}
        assert values_types == crd_types, (
            f"{kind}: update the spec fields in charts/tollgate-market/values.schema.json")
        # tenantRef is filled in by the chart, so the values need not require it.
        assert set(values_spec["required"]) == set(crd_spec["required"]) - {"tenantRef"}, kind


# --------------------------------------------------------------------------- market examples


@pytest.mark.parametrize("market", MARKETS)
def test_market_example_renders_a_tenant_with_its_catalog(tools: Tools, market: str) -> None:
    documents = render_market(tools, market, f"market-{market}")
    (tenant,) = by_kind(documents, "Tenant")
    offers = by_kind(documents, "Offer")
    agreements = by_kind(documents, "PartnerAgreement")
    assert offers and agreements
    for doc in [*offers, *agreements]:
        assert doc["spec"]["tenantRef"] == {"name": tenant["metadata"]["name"]}
        assert doc["metadata"]["namespace"] == f"market-{market}"
    # The same models validate `make run`'s YAML without Kubernetes.
    for doc in [tenant, *offers, *agreements]:
        parse_resource(doc, source=f"{market}.yaml {doc['kind']}/{doc['metadata']['name']}")


def test_market_examples_differ_in_currency_tax_and_timezone(tools: Tools) -> None:
    tenants = {market: by_kind(render_market(tools, market, "ns"), "Tenant")[0]["spec"]
               for market in MARKETS}
    assert len(tenants) >= 2
    de, jp = tenants["de"], tenants["jp"]
    assert (de["currency"], de["timezone"]) == ("EUR", "Europe/Berlin")
    assert de["taxes"] == [{"category": "standard", "rate": "19", "inclusive": True}]
    assert (jp["currency"], jp["timezone"]) == ("JPY", "Asia/Tokyo")
    assert jp["taxes"] == [{"category": "standard", "rate": "10", "inclusive": True}]


def test_offer_can_be_dropped_by_a_later_values_file(tools: Tools) -> None:
    documents = render_market(tools, "de", "ns", "--set", "offers.data-boost.enabled=false")
    assert [doc["metadata"]["name"] for doc in by_kind(documents, "Offer")] == ["mobile-m"]


# --------------------------------------------------------------------------- RBAC, statically


def _rules(documents: list[Document]) -> Iterator[tuple[str, Document]]:
    for doc in by_kind(documents, "ClusterRole", "Role"):
        for rule in doc.get("rules") or []:
            yield doc["metadata"]["name"], rule


def _all_rbac_renders(tools: Tools) -> dict[str, list[Document]]:
    renders = {f"operator {mode}": render(tools, OPERATOR_CHART, "tg", "tollgate-system", *args)
               for mode, args in MODES.items()}
    renders |= {f"market {m}": render_market(tools, m, f"market-{m}") for m in MARKETS}
    return renders


def test_rbac_has_no_wildcards(tools: Tools) -> None:
    for name, documents in _all_rbac_renders(tools).items():
        rules = list(_rules(documents))
        assert rules or name.startswith("market"), f"{name}: no RBAC rendered"
        for role, rule in rules:
            for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert "*" not in (rule.get(key) or []), f"{name}: {role} has '*' in {key}"
            assert not any("*" in r for r in rule.get("resources") or []), f"{name}: {role}"


def test_no_cluster_wide_binding_reads_secrets(tools: Tools) -> None:
    for name, documents in _all_rbac_renders(tools).items():
        cluster_roles = {doc["metadata"]["name"]: doc for doc in by_kind(documents, "ClusterRole")}
        for binding in by_kind(documents, "ClusterRoleBinding"):
            role = cluster_roles[binding["roleRef"]["name"]]
            for rule in role.get("rules") or []:
                if "" in rule["apiGroups"] and "secrets" in rule["resources"]:
                    verbs = SECRET_READ_VERBS & set(rule["verbs"])
                    assert not verbs, (
                        f"{name}: ClusterRoleBinding {binding['metadata']['name']} grants "
                        f"{sorted(verbs)} on Secrets in every namespace"
                    )


# --------------------------------------------------------------------------- pod security


def _pod_specs(documents: list[Document]) -> Iterator[tuple[str, Document]]:
    for doc in documents:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        where = f"{kind}/{doc.get('metadata', {}).get('name')}"
        if kind == "Pod":
            yield where, spec
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield where, spec["template"]["spec"]
        elif kind == "CronJob":
            yield where, spec["jobTemplate"]["spec"]["template"]["spec"]


def _restricted_violations(pod: Document) -> list[str]:
    """What breaks the restricted Pod Security Standard, or our own container rules."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"{key} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']} is {sorted(kinds)}")
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = container.get("securityContext") or {}
        name = container["name"]
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{name}: runs as UID 0")
        seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile is not RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"{name}: readOnlyRootFilesystem is not true")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities {capabilities['add']}")
        resources = container.get("resources") or {}
        if "memory" not in (resources.get("limits") or {}) or not resources.get("requests"):
            found.append(f"{name}: no requests or no memory limit")
    return found


def test_rendered_pods_follow_the_restricted_pod_security_standard(tools: Tools) -> None:
    checked = []
    for name, documents in _all_rbac_renders(tools).items():
        for where, pod in _pod_specs(documents):
            violations = _restricted_violations(pod)
            assert not violations, f"{name} {where}: {'; '.join(violations)}"
            checked.append(where)
    # The operator Deployment and its test Pod (both modes), a test Pod per market.
    assert len(checked) == 2 * len(MODES) + len(MARKETS), checked


def test_operator_deployment_has_probes_and_a_writable_tmp(tools: Tools) -> None:
    (deployment,) = by_kind(render(tools, OPERATOR_CHART, "x", "ns"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108


# --------------------------------------------------------------------------- the API server


@dataclass(frozen=True)
class Cluster:
    """The session's control plane, seen through the PyPI kubectl, with this module's names."""

    plane: ControlPlane
    tools: Tools
    prefix: str  # of every name this module creates

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.tools.kubectl), f"--kubeconfig={self.plane.kubeconfig}", *args]
        return _run(self.tools, cmd, stdin)

    def namespace(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def dry_run(self, documents: list[Document]) -> subprocess.CompletedProcess[str]:
        """Server-side apply as a dry run: admission, schemas and CEL run, nothing is stored."""
        return self.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                            "--field-manager=tollgate-chart-tests", "-f", "-",
                            stdin=_as_yaml(documents))

    def can(self, user: str, verb: str, resource: str, *, group: str = "",
            namespace: str = "", subresource: str = "", name: str = "") -> bool:
        """Ask the RBAC authorizer (a SubjectAccessReview) whether *user* may do this."""
        namespace_of_user = user.split(":")[2]
        attributes = {"verb": verb, "group": group, "resource": resource,
                      "subresource": subresource, "namespace": namespace, "name": name}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace_of_user}",
                           "system:authenticated"],
                "resourceAttributes": {k: v for k, v in attributes.items() if v},
            },
        }
        answer = self.plane.api("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                                review)
        return bool(answer["status"].get("allowed"))


def _as_yaml(documents: list[Document]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane, tools: Tools) -> Iterator[Cluster]:
    """Namespaces enforcing the restricted Pod Security Standard, and Kopf's peering CRDs.

    The peering CRDs are applied for real (their objects can only be validated once they are
    served) unless present, and removed again by whoever applied them.
    """
    cluster = Cluster(control_plane, tools, f"tgc{secrets.token_hex(3)}")
    namespaces = [cluster.namespace(role) for role in ("system", *MARKETS, "other")]
    for namespace in namespaces:
        _ok(cluster.kubectl("create", "namespace", namespace))
        _ok(cluster.kubectl("label", "namespace", namespace,
                            f"pod-security.kubernetes.io/enforce={RESTRICTED}",
                            f"pod-security.kubernetes.io/warn={RESTRICTED}"))
    peering = "crd/clusterkopfpeerings.kopf.dev"
    created_peering = cluster.kubectl("get", peering).returncode != 0
    if created_peering:
        _ok(cluster.kubectl("apply", "--server-side", "-f", str(PEERING_CRDS)))
        _ok(cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "-f", str(PEERING_CRDS)))
    try:
        yield cluster
    finally:
        if created_peering:
            cluster.kubectl("delete", "--wait=false", "-f", str(PEERING_CRDS))
        cluster.kubectl("delete", "namespace", "--wait=false", *namespaces)


def _operator_render(cluster: Cluster, mode: str) -> list[Document]:
    """The operator chart in `<prefix>-system`, its namespaces being this module's."""
    markets = [cluster.namespace(m) for m in MARKETS]
    args = {
        "cluster-wide": ["--set", f"rbac.tenantNamespaces={{{markets[0]}}}"],
        "namespaced": ["--set", f"watchNamespaces={{{','.join(markets)}}}"],
    }[mode]
    return render(cluster.tools, OPERATOR_CHART, "tollgate-operator", cluster.namespace("system"),
                  "--set", f"fullnameOverride={cluster.prefix}-{mode}", *args)


def _assert_applies_cleanly(cluster: Cluster, documents: list[Document]) -> None:
    proc = cluster.dry_run(documents)
    assert proc.returncode == 0, f"server-side dry-run refused:\n{proc.stderr}"
    assert "would violate PodSecurity" not in proc.stderr, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(documents), proc.stdout


@pytest.mark.parametrize("mode", sorted(MODES))
def test_operator_chart_passes_a_server_side_dry_run(cluster: Cluster, mode: str) -> None:
    _assert_applies_cleanly(cluster, _operator_render(cluster, mode))


@pytest.mark.parametrize("market", MARKETS)
def test_market_chart_passes_the_crd_validation_of_the_api_server(
    cluster: Cluster, market: str
) -> None:
    documents = render_market(cluster.tools, market, cluster.namespace(market))
    assert len(by_kind(documents, *TOLLGATE_KINDS)) >= 3
    _assert_applies_cleanly(cluster, documents)


def test_api_server_refuses_a_market_that_breaks_a_cel_rule(cluster: Cluster) -> None:
    # The dry-run above would prove nothing if the server accepted anything.
    documents = render_market(cluster.tools, "de", cluster.namespace("de"),
                              "--set", "tenant.spec.database.mode=external")
    proc = cluster.dry_run(by_kind(documents, "Tenant"))
    assert proc.returncode != 0
    assert "secretRef" in proc.stderr, proc.stderr  # the CEL rule's message names the field


def test_api_server_enforces_the_restricted_standard_in_the_test_namespaces(
    cluster: Cluster,
) -> None:
    # A control: the same operator test Pod, made to run as root, is refused.
    documents = by_kind(_operator_render(cluster, "cluster-wide"), "Pod")
    assert documents
    documents[0]["spec"]["securityContext"]["runAsNonRoot"] = False
    for container in documents[0]["spec"]["containers"]:
        container["securityContext"]["runAsNonRoot"] = False
    proc = cluster.dry_run(documents)
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- RBAC, live


@pytest.fixture(scope="module")
def rbac_applied(cluster: Cluster) -> Iterator[Cluster]:
    """The RBAC of both operator modes and of the market releases, applied for real."""
    rbac_kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    documents = [doc for mode in sorted(MODES)
                 for doc in by_kind(_operator_render(cluster, mode), *rbac_kinds)]
    # The second market grants the cluster-wide operator access through its own release.
    market = MARKETS[1]
    access = [
        "--set", f"operatorAccess.clusterRole={cluster.prefix}-cluster-wide-workloads",
        "--set", f"operatorAccess.serviceAccount.name={cluster.prefix}-cluster-wide",
        "--set", f"operatorAccess.serviceAccount.namespace={cluster.namespace('system')}",
    ]
    documents += by_kind(render_market(cluster.tools, market, cluster.namespace(market), *access),
                         "RoleBinding")
    manifest = _as_yaml(documents)
    _ok(cluster.kubectl("apply", "--server-side", "-f", "-", stdin=manifest))
    try:
        yield cluster
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=manifest)


def _operator(cluster: Cluster, mode: str) -> str:
    return f"system:serviceaccount:{cluster.namespace('system')}:{cluster.prefix}-{mode}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_operator_may_manage_tenant_workloads_only_in_tenant_namespaces(
    rbac_applied: Cluster, mode: str
) -> None:
    c, user = rbac_applied, _operator(rbac_applied, mode)
    children = [("", "serviceaccounts"), ("", "configmaps"), ("", "secrets"), ("", "services"),
                ("apps", "deployments"), ("batch", "jobs"), ("batch", "cronjobs"),
                ("policy", "poddisruptionbudgets"),
                ("networking.k8s.io", "networkpolicies"), ("postgresql.cnpg.io", "clusters")]
    for market in MARKETS:
        namespace = c.namespace(market)
        for group, resource in children:
            for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
                assert c.can(user, verb, resource, group=group, namespace=namespace), (
                    f"{mode}: may not {verb} {resource} in {namespace}")
    for group, resource in children:
        assert not c.can(user, "create", resource, group=group, namespace=c.namespace("other"))
    for verb in ("get", "list", "watch"):
        assert not c.can(user, verb, "secrets"), f"{mode}: may {verb} Secrets cluster-wide"
        assert not c.can(user, verb, "secrets", namespace=c.namespace("other"))
    # Kopf watches the Tenants' Deployments, Jobs and CloudNativePG Clusters: everywhere only
    # when cluster-wide.
    for group, resource in (("apps", "deployments"), ("batch", "jobs"),
                            ("postgresql.cnpg.io", "clusters")):
        for verb in ("list", "watch"):
            assert c.can(user, verb, resource, group=group) == (mode == "cluster-wide")
        assert not c.can(user, "get", resource, group=group, namespace=c.namespace("other"))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_operator_may_reconcile_tollgate_resources_and_nothing_more(
    rbac_applied: Cluster, mode: str
) -> None:
    c, user = rbac_applied, _operator(rbac_applied, mode)
    namespace = c.namespace(MARKETS[0])
    group = "bss.tollgate.dev"
    for resource in ("tenants", "offers", "partneragreements"):
        for verb in ("get", "list", "watch", "patch"):
            assert c.can(user, verb, resource, group=group, namespace=namespace), (verb, resource)
        assert c.can(user, "patch", resource, group=group, namespace=namespace,
                     subresource="status")
        assert c.can(user, "update", resource, group=group, namespace=namespace,
                     subresource="finalizers")
        assert not c.can(user, "create", resource, group=group, namespace=namespace)
        assert not c.can(user, "delete", resource, group=group, namespace=namespace)
    assert c.can(user, "create", "events", namespace=namespace)
    assert c.can(user, "create", "events", group="events.k8s.io", namespace=namespace)
    # Namespaced: nothing outside its namespaces; cluster-wide: the Tollgate kinds everywhere.
    everywhere = c.can(user, "list", "tenants", group=group)
    assert everywhere == (mode == "cluster-wide")
    assert c.can(user, "list", "tenants", group=group, namespace=c.namespace("other")) == everywhere
    # Never: RBAC itself, CRDs, nodes, pods/exec.
    assert not c.can(user, "create", "rolebindings", group="rbac.authorization.k8s.io",
                     namespace=namespace)
    assert not c.can(user, "bind", "clusterroles", group="rbac.authorization.k8s.io")
    assert not c.can(user, "update", "customresourcedefinitions", group="apiextensions.k8s.io")
    assert not c.can(user, "create", "pods", namespace=namespace, subresource="exec")
    assert not c.can(user, "list", "nodes")


def test_operator_may_touch_only_its_own_peering_object(rbac_applied: Cluster) -> None:
    c = rbac_applied
    cluster_wide, namespaced = _operator(c, "cluster-wide"), _operator(c, "namespaced")
    own = f"{c.prefix}-cluster-wide"
    assert c.can(cluster_wide, "patch", "clusterkopfpeerings", group="kopf.dev", name=own)
    assert c.can(cluster_wide, "watch", "clusterkopfpeerings", group="kopf.dev")
    assert not c.can(cluster_wide, "patch", "clusterkopfpeerings", group="kopf.dev",
                     name="default")
    namespace = c.namespace(MARKETS[0])
    own = f"{c.prefix}-namespaced"
    assert c.can(namespaced, "patch", "kopfpeerings", group="kopf.dev", namespace=namespace,
                 name=own)
    assert not c.can(namespaced, "patch", "kopfpeerings", group="kopf.dev",
                     namespace=c.namespace("other"), name=own)
    assert not c.can(namespaced, "patch", "clusterkopfpeerings", group="kopf.dev", name=own)
