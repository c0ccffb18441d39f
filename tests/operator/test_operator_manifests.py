"""The operator's manifest builders, pure: labels, ownership, restricted Pod Security, wiring."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.operator_fixtures import tenant_workload
from tollgate_operator import manifests
from tollgate_operator.manifests import Component

UID = "5f0c3a52-0000-4000-8000-000000000001"


def _pod_specs(children: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["spec"]["template"]["spec"] for c in children if c["kind"] in ("Deployment", "Job")]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_every_child_is_owned_by_its_tenant_as_controller() -> None:
    t = tenant_workload(uid=UID)
    for child in manifests.tenant_children(t):
        assert child["metadata"]["ownerReferences"] == [{
            "apiVersion": "bss.tollgate.dev/v1alpha1", "kind": "Tenant", "name": t.name,
            "uid": UID, "controller": True, "blockOwnerDeletion": True,
        }], child["metadata"]["name"]
        assert child["metadata"]["namespace"] == t.namespace


def test_every_child_carries_the_standard_labels() -> None:
    t = tenant_workload()
    for child in manifests.tenant_children(t):
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tollgate"
        assert labels["app.kubernetes.io/instance"] == t.name
        assert labels["app.kubernetes.io/part-of"] == "tollgate"
        assert labels["app.kubernetes.io/managed-by"] == "tollgate-operator"
        assert labels["app.kubernetes.io/component"]
        assert labels["bss.tollgate.dev/tenant"] == t.name


def test_the_children_are_the_designed_set() -> None:
    t = tenant_workload(name="de")
    kinds = sorted((c["kind"], c["metadata"]["name"]) for c in manifests.tenant_children(t))
    job = manifests.migration_job_name(t)
    assert kinds == sorted([
        ("ServiceAccount", "de-tollgate"), ("ConfigMap", "de-config"), ("Job", job),
        ("NetworkPolicy", "de-default-deny"), ("NetworkPolicy", "de-allow-egress"),
        ("NetworkPolicy", "de-allow-api-ingress"), ("NetworkPolicy", "de-allow-metrics"),
        *[(kind, f"de-{c}") for c in ("charging", "billing", "api")
          for kind in ("Deployment", "Service", "PodDisruptionBudget")],
    ])


@pytest.mark.parametrize("mode", ["external", "managed"])
def test_pods_follow_the_restricted_pod_security_standard(mode: str) -> None:
    t = tenant_workload(database={"mode": mode, "secretRef": "db"} if mode == "external"
                        else {"mode": mode})
    pods = _pod_specs(manifests.tenant_children(t))
    assert len(pods) == 4  # charging, billing, api, migration
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert "hostNetwork" not in pod and "hostPID" not in pod
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["runAsNonRoot"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "memory" in container["resources"]["limits"]
        mounts = {m["name"] for c in pod["containers"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts <= set(volumes)
        assert all("emptyDir" in v for v in volumes.values())  # no hostPath, no PVC


def test_selectors_match_the_pods_and_only_use_stable_labels() -> None:
    t = tenant_workload()
    for component in Component:
        deployment = manifests.deployment(t, component)
        selector = deployment["spec"]["selector"]["matchLabels"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                                 "app.kubernetes.io/component"}
        assert manifests.service(t, component)["spec"]["selector"] == selector
        pdb = manifests.pod_disruption_budget(t, component)
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        assert pdb["spec"]["maxUnavailable"] == 1


def test_replicas_follow_the_spec() -> None:
    t = tenant_workload(charging={"replicas": 3}, api={"replicas": 0})
    assert manifests.deployment(t, Component.CHARGING)["spec"]["replicas"] == 3
    assert manifests.deployment(t, Component.API)["spec"]["replicas"] == 0
    assert manifests.deployment(t, Component.BILLING)["spec"]["replicas"] == 1


def test_external_database_dsn_comes_from_the_secret_and_the_owner_only_reaches_the_job() -> None:
    t = tenant_workload(database={"mode": "external", "secretRef": "de-db"})
    for component in Component:
        container = manifests.deployment(t, component)["spec"]["template"]["spec"][
            "containers"][0]
        env = _env(container)
        assert env["TOLLGATE_DATABASE_URL"]["valueFrom"] == {
            "secretKeyRef": {"name": "de-db", "key": "dsn"}}
        assert "TOLLGATE_OWNER_DATABASE_URL" not in env
        assert container["envFrom"] == [{"configMapRef": {"name": f"{t.name}-config"}}]
    job = manifests.migration_job(t)["spec"]["template"]["spec"]["containers"][0]
    assert _env(job)["TOLLGATE_OWNER_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "de-db", "key": "ownerDsn"}}
    assert job["args"] == ["migrate"]


def test_managed_database_is_a_cnpg_cluster_with_a_generated_app_role_password() -> None:
    t = tenant_workload(name="de", namespace="market-de", database={"mode": "managed"})
    cluster = manifests.cnpg_cluster(t)
    assert cluster["apiVersion"] == "postgresql.cnpg.io/v1"
    assert cluster["metadata"]["name"] == "de-db"
    assert cluster["spec"]["managed"]["roles"][0]["passwordSecret"] == {"name": "de-db-app-role"}
    env = manifests.deployment(t, Component.CHARGING)["spec"]["template"]["spec"][
        "containers"][0]["env"]
    names = [e["name"] for e in env]
    # $(TOLLGATE_DB_PASSWORD) expands only from a variable defined earlier in the list
    assert names.index("TOLLGATE_DB_PASSWORD") < names.index("TOLLGATE_DATABASE_URL")
    assert env[names.index("TOLLGATE_DATABASE_URL")]["value"] == (
        "postgresql://tollgate_app:$(TOLLGATE_DB_PASSWORD)@de-db-rw.market-de.svc:5432/tollgate")
    generated = {g.name: g for g in manifests.generated_secrets(t)}
    assert generated["de-db-app-role"].type == "kubernetes.io/basic-auth"
    assert dict(generated["de-db-app-role"].fixed) == {"username": "tollgate_app"}
    assert "de-credentials" in generated


def test_default_deny_selects_every_tenant_pod_in_both_directions() -> None:
    t = tenant_workload(name="de")
    policies = {p["metadata"]["name"]: p for p in manifests.network_policies(t)}
    deny = policies["de-default-deny"]["spec"]
    assert deny == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tollgate",
                                                    "app.kubernetes.io/instance": "de"}},
                    "policyTypes": ["Ingress", "Egress"]}
    egress_ports = {(p["protocol"], p["port"]) for rule in
                    policies["de-allow-egress"]["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 4222)}
    api = policies["de-allow-api-ingress"]["spec"]
    assert api["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert api["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]


def test_migration_job_name_changes_with_the_image_only() -> None:
    first = tenant_workload(image="example.invalid/tollgate:1")
    same = tenant_workload(image="example.invalid/tollgate:1", charging={"replicas": 5})
    other = tenant_workload(image="example.invalid/tollgate:2")
    assert manifests.migration_job_name(first) == manifests.migration_job_name(same)
    assert manifests.migration_job_name(first) != manifests.migration_job_name(other)


def test_a_config_change_rolls_the_pods() -> None:
    def config_hash(batch_max: int) -> str:
        t = tenant_workload(charging={"batchMax": batch_max})
        template = manifests.deployment(t, Component.CHARGING)["spec"]["template"]
        return str(template["metadata"]["annotations"]["bss.tollgate.dev/config-hash"])

    assert config_hash(500) == config_hash(500)
    assert config_hash(500) != config_hash(1000)


def test_child_names_fit_kubernetes_limits_for_the_longest_tenant_name() -> None:
    t = tenant_workload(name="t" * manifests.MAX_TENANT_NAME)
    names = [c["metadata"]["name"] for c in manifests.tenant_children(t)]
    assert max(len(n) for n in names) <= 63


@pytest.mark.parametrize(("name", "problem"), [
    ("de", None),
    ("1de", "must start with a letter"),
    ("de.market", "must start with a letter"),
    ("d" * 41, "at most 40 characters"),
])
def test_tenant_names_must_be_able_to_prefix_service_names(name: str, problem: str | None
                                                           ) -> None:
    error = manifests.tenant_name_error(name)
    assert (error is None) if problem is None else (error is not None and problem in error)


def test_partner_secret_is_owned_by_the_agreement() -> None:
    owner = manifests.Owner("bss.tollgate.dev/v1alpha1", "PartnerAgreement", "streamflix", UID)
    generated = manifests.partner_credentials("streamflix")
    secret = manifests.secret(owner, "market-de", "de", "partner-credentials", generated,
                              {"apiKey": "k"})
    assert secret["metadata"]["name"] == "streamflix-api-key"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "PartnerAgreement"
    assert secret["stringData"] == {"apiKey": "k"}
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == "de"


# --------------------------------------------------------------------------- legacy sync

LEGACY = {"mode": "reconcile", "extractsClaim": "legacy-files", "schedule": "30 3 * * *",
          "toleranceMicros": 5000, "tolerancePpm": 100, "amountUnit": "minor"}


def _legacy_pod(cronjob: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def test_no_legacy_cronjob_unless_mirror_or_reconcile() -> None:
    kinds = {c["kind"] for c in manifests.tenant_children(tenant_workload())}
    assert "CronJob" not in kinds
    mirror = tenant_workload(legacy={"mode": "mirror", "extractsClaim": "x"})
    (cronjob,) = [c for c in manifests.tenant_children(mirror) if c["kind"] == "CronJob"]
    assert cronjob["metadata"]["name"] == "de-legacy"
    assert _legacy_pod(cronjob)["containers"][0]["args"] == [
        "assurance", "sync", "--dir", "/legacy", "--unit", "micro"]


def test_legacy_cronjob_runs_the_sync_once_at_a_time_in_the_tenants_zone() -> None:
    t = tenant_workload(name="de", legacy=LEGACY)
    cronjob = manifests.legacy_cronjob(t)
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == (
        "30 3 * * *", "Europe/Berlin", "Forbid")
    assert spec["jobTemplate"]["metadata"]["labels"] == manifests.labels("de", "legacy-sync")
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["metadata"]["labels"] == manifests.labels("de", "legacy-sync")
    refused, drained = job["podFailurePolicy"]["rules"]
    assert refused == {"action": "FailJob", "onExitCodes": {
        "containerName": "sync", "operator": "In", "values": [3]}}
    assert drained["action"] == "Ignore"
    pod = _legacy_pod(cronjob)
    (container,) = pod["containers"]
    assert container["image"] == t.image and container["command"] == ["tollgate"]
    assert container["args"] == ["assurance", "sync", "--dir", "/legacy", "--unit", "minor",
                                 "--reconcile", "--tolerance-micros", "5000",
                                 "--tolerance-ppm", "100"]
    assert {"name": "legacy", "mountPath": "/legacy"} in container["volumeMounts"]
    assert {"name": "legacy", "persistentVolumeClaim": {"claimName": "legacy-files"}} in (
        pod["volumes"])
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "de-tollgate"
    assert pod["automountServiceAccountToken"] is False


def test_legacy_sync_is_wired_like_the_workloads_and_follows_the_restricted_standard() -> None:
    for database in ({"mode": "external", "secretRef": "de-db"}, {"mode": "managed"}):
        t = tenant_workload(legacy=LEGACY, database=database)
        pod = _legacy_pod(manifests.legacy_cronjob(t))
        (container,) = pod["containers"]
        charging = manifests.deployment(t, Component.CHARGING)["spec"]["template"]["spec"][
            "containers"][0]
        # the application role (never the schema owner), tenant and NATS from the ConfigMap
        assert container["env"] == charging["env"]
        assert "TOLLGATE_OWNER_DATABASE_URL" not in _env(container)
        assert container["envFrom"] == charging["envFrom"]
        assert pod["securityContext"] == manifests.pod_security_context()
        assert container["securityContext"] == manifests.container_security_context()
        assert container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["cpu"]


def test_legacy_sync_pods_are_under_the_tenants_network_policies() -> None:
    """Default deny selects them; the egress allow lets them reach PostgreSQL and NATS (the
    claim is storage, mounted by the kubelet: no network policy applies to it)."""
    t = tenant_workload(legacy=LEGACY)
    pod_labels = manifests.legacy_cronjob(t)["spec"]["jobTemplate"]["spec"]["template"][
        "metadata"]["labels"]
    policies = {p["metadata"]["name"]: p["spec"] for p in manifests.network_policies(t)}
    for name in ("de-default-deny", "de-allow-egress"):
        assert policies[name]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["port"] for rule in policies["de-allow-egress"]["egress"] for p in rule["ports"]}
    assert {5432, 4222} <= ports


def test_legacy_cronjob_is_owned_and_its_name_fits() -> None:
    t = tenant_workload(name="t" * manifests.MAX_TENANT_NAME, uid=UID, legacy=LEGACY)
    cronjob = manifests.legacy_cronjob(t)
    assert cronjob["metadata"]["ownerReferences"][0]["uid"] == UID
    # the CronJob controller names Jobs `<cronjob>-<minutes since epoch>` (11 more characters)
    assert len(cronjob["metadata"]["name"]) + 11 <= 63
