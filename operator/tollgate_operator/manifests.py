"""Pure builders of the Kubernetes objects a Tenant or PartnerAgreement owns.

No I/O: each function turns a spec into plain manifests (dicts) that the operator
server-side applies. Invariants: every object carries the `app.kubernetes.io/*` labels and a
controller ownerReference to its owner (so deletion cascades); every Pod follows the
"restricted" Pod Security Standard; selectors use only labels that never change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from tollgate_core.resources import API_GROUP, TenantSpec
from tollgate_core.resources.tenant import DatabaseMode, LegacyMode
from tollgate_operator.conditions import ConditionType
from tollgate_operator.settings import FIELD_MANAGER

Manifest = dict[str, Any]

APP_NAME = "tollgate"
TENANT_LABEL = f"{API_GROUP}/tenant"
MAX_TENANT_NAME = 40
"""Longest Tenant name: children are `<tenant>-<suffix>` (at most 63 characters, suffixes up
to 18) and Service names must be DNS-1035 labels."""
_TENANT_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

RUN_AS_ID = 65532  # the conventional "nonroot" user of distroless and slim images
DSN_KEY = "dsn"
"""Key of the application-role DSN in an external database Secret."""
OWNER_DSN_KEY = "ownerDsn"
"""Key of the schema-owner DSN (migrations only) in an external database Secret."""
JWT_SECRET_KEY = "jwtSecret"  # noqa: S105  (a key name)
API_KEY = "apiKey"
APP_ROLE = "tollgate_app"
DATABASE_NAME = "tollgate"
CNPG_API_VERSION = "postgresql.cnpg.io/v1"
CNPG_INSTANCES = 3
CNPG_STORAGE = "10Gi"
CNPG_MAX_CLUSTER_NAME = 50
"""CloudNativePG's admission webhook refuses longer Cluster names (`validateName`)."""
MIGRATION = "migration"
"""Component label of the schema migration Jobs."""
LEGACY = "legacy-sync"
"""Component label of the legacy sync CronJob and its Jobs."""
LEGACY_MOUNT = "/legacy"
"""Where the sync Pods mount `spec.legacy.extractsClaim`."""
LEGACY_EXTRACT_REFUSED = 3
"""Exit code of `tollgate assurance sync` when an extract was refused: the Job fails at once
(retrying cannot help; the extract is in inbox/failed/ already)."""
API_PORT = 8080
METRICS_PORT = 9090


class Component(StrEnum):
    """The workloads of a tenant."""

    CHARGING = "charging"
    BILLING = "billing"
    API = "api"

    @property
    def condition(self) -> ConditionType:
        return _COMPONENT_CONDITIONS[self]


_COMPONENT_CONDITIONS = {
    Component.CHARGING: ConditionType.CHARGING_READY,
    Component.BILLING: ConditionType.BILLING_READY,
    Component.API: ConditionType.API_READY,
}


@dataclass(frozen=True, slots=True)
class Owner:
    """The object that owns a child: its deletion deletes the child (garbage collection)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(str(body["apiVersion"]), str(body["kind"]), str(meta["name"]),
                   str(meta["uid"]))


@dataclass(frozen=True, slots=True)
class TenantWorkload:
    """What the builders know of one Tenant: its identity, spec and the workload image."""

    owner: Owner
    namespace: str
    spec: TenantSpec
    image: str

    @property
    def name(self) -> str:
        return self.owner.name

    def child(self, suffix: str) -> str:
        return f"{self.name}-{suffix}"


@dataclass(frozen=True, slots=True)
class GeneratedSecret:
    """A Secret whose values the operator generates once and never regenerates."""

    name: str
    keys: tuple[str, ...]
    """Keys holding a random token."""
    fixed: tuple[tuple[str, str], ...] = ()
    """Keys with a known value (e.g. a username)."""
    type: str = "Opaque"


def tenant_name_error(name: str) -> str | None:
    """Why `name` cannot name a Tenant's children, or None when it can."""
    if not _TENANT_NAME.match(name):
        return (f"metadata.name: {name!r} must start with a letter and hold only lower-case "
                "letters, digits and '-' (it prefixes Service names, DNS-1035 labels)")
    if len(name) > MAX_TENANT_NAME:
        return (f"metadata.name: at most {MAX_TENANT_NAME} characters (children are named "
                f"'<tenant>-<suffix>'), got {len(name)}")
    return None


# --------------------------------------------------------------------------- labels


def selector_labels(tenant: str, component: str) -> dict[str, str]:
    """Labels a selector may use: they never change for the life of the object."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": tenant,
            "app.kubernetes.io/component": component}


def labels(tenant: str, component: str) -> dict[str, str]:
    return {**selector_labels(tenant, component),
            "app.kubernetes.io/part-of": APP_NAME,
            "app.kubernetes.io/managed-by": FIELD_MANAGER,
            TENANT_LABEL: tenant}


def tenant_pods(tenant: str) -> dict[str, str]:
    """Selects every Pod of one tenant (all components)."""
    return {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/instance": tenant}


def _meta(t: TenantWorkload, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": t.namespace, "labels": labels(t.name, component),
            "ownerReferences": [t.owner.reference()]}


def _digest(value: object, length: int = 8) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------- names


def service_account_name(t: TenantWorkload) -> str:
    return t.child("tollgate")


def config_map_name(t: TenantWorkload) -> str:
    return t.child("config")


def credentials_secret_name(t: TenantWorkload) -> str:
    return t.child("credentials")


def app_role_secret_name(t: TenantWorkload) -> str:
    return t.child("db-app-role")


def cnpg_cluster_name(t: TenantWorkload) -> str:
    return t.child("db")


def cnpg_rw_host(t: TenantWorkload) -> str:
    """CloudNativePG's read-write Service of the Cluster (`<cluster>-rw`): always the primary."""
    return f"{cnpg_cluster_name(t)}-rw.{t.namespace}.svc"


def cnpg_app_secret_name(t: TenantWorkload) -> str:
    """The Secret CloudNativePG generates for the database owner (`<cluster>-app`) when
    `bootstrap.initdb.secret` is not set; its key `uri` is a ready DSN to the `-rw` Service."""
    return f"{cnpg_cluster_name(t)}-app"


def workload_name(t: TenantWorkload, component: Component) -> str:
    return t.child(component.value)


def migration_job_name(t: TenantWorkload) -> str:
    """Job templates are immutable: a new image or database wiring gets a new Job."""
    return t.child(f"migrate-{_digest([t.image, migration_env(t)])}")


def legacy_cronjob_name(t: TenantWorkload) -> str:
    return t.child("legacy")


def graphql_endpoint(t: TenantWorkload) -> str:
    if t.spec.api.hostnames:
        return f"https://{t.spec.api.hostnames[0]}/graphql"
    return f"http://{workload_name(t, Component.API)}.{t.namespace}.svc/graphql"


# --------------------------------------------------------------------------- database wiring


def database_env(t: TenantWorkload) -> list[dict[str, Any]]:
    """`TOLLGATE_DATABASE_URL` of the workloads: the application role, never the owner."""
    database = t.spec.database
    if database.mode is DatabaseMode.EXTERNAL:
        assert database.secret_ref is not None  # the spec model requires it
        return [{"name": "TOLLGATE_DATABASE_URL", "valueFrom": {
            "secretKeyRef": {"name": database.secret_ref, "key": DSN_KEY}}}]
    host = cnpg_rw_host(t)
    return [
        {"name": "TOLLGATE_DB_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": app_role_secret_name(t), "key": "password"}}},
        # Kubernetes expands $(VAR) from variables defined earlier in the list.
        {"name": "TOLLGATE_DATABASE_URL",
         "value": f"postgresql://{APP_ROLE}:$(TOLLGATE_DB_PASSWORD)@{host}:5432/{DATABASE_NAME}"},
    ]


def migration_env(t: TenantWorkload) -> list[dict[str, Any]]:
    """The schema owner's DSN, seen only by the migration Job."""
    database = t.spec.database
    if database.mode is DatabaseMode.EXTERNAL:
        ref = {"name": database.secret_ref, "key": OWNER_DSN_KEY}
    else:  # CloudNativePG's secret of the database owner
        ref = {"name": cnpg_app_secret_name(t), "key": "uri"}
    return [{"name": "TOLLGATE_OWNER_DATABASE_URL", "valueFrom": {"secretKeyRef": ref}}]


def generated_secrets(t: TenantWorkload) -> list[GeneratedSecret]:
    """Secrets whose values the operator invents: created once, then left as they are."""
    secrets = [GeneratedSecret(credentials_secret_name(t), keys=(JWT_SECRET_KEY,))]
    if t.spec.database.mode is DatabaseMode.MANAGED:
        secrets.append(GeneratedSecret(app_role_secret_name(t), keys=("password",),
                                       fixed=(("username", APP_ROLE),),
                                       type="kubernetes.io/basic-auth"))
    return secrets


def secret(owner: Owner, namespace: str, tenant: str, component: str,
           generated: GeneratedSecret, values: Mapping[str, str]) -> Manifest:
    """A generated Secret with its (already generated) `values` as stringData."""
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": generated.name, "namespace": namespace,
                     "labels": labels(tenant, component),
                     "ownerReferences": [owner.reference()]},
        "type": generated.type,
        "stringData": {**dict(generated.fixed), **values},
    }


# --------------------------------------------------------------------------- pods


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_ID, "runAsGroup": RUN_AS_ID,
            "fsGroup": RUN_AS_ID, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container(t: TenantWorkload, name: str, args: list[str], env: list[dict[str, Any]],
               ports: list[dict[str, Any]], resources: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name, "image": t.image, "imagePullPolicy": "IfNotPresent",
        "command": ["tollgate"], "args": args,
        "envFrom": [{"configMapRef": {"name": config_map_name(t)}}],
        "env": env, "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108  (an emptyDir)
    }
    if ports:
        container["ports"] = ports
    return container


def _pod_spec(t: TenantWorkload, container: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "serviceAccountName": service_account_name(t),
        "automountServiceAccountToken": False,  # workloads never call the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        **extra,
    }


_RESOURCES: dict[Component, dict[str, Any]] = {
    # DESIGN: a charging process stays under 256 MiB.
    Component.CHARGING: {"requests": {"cpu": "250m", "memory": "128Mi"},
                         "limits": {"memory": "256Mi"}},
    Component.BILLING: {"requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "512Mi"}},
    Component.API: {"requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"memory": "256Mi"}},
}


def replicas(t: TenantWorkload, component: Component) -> int:
    if component is Component.CHARGING:
        return t.spec.charging.replicas
    if component is Component.API:
        return t.spec.api.replicas
    return 1  # bill runs number invoices gaplessly; one billing engine per tenant


def _ports(component: Component) -> list[dict[str, Any]]:
    ports = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]
    if component is Component.API:
        ports.insert(0, {"name": "http", "containerPort": API_PORT, "protocol": "TCP"})
    return ports


def _args(component: Component) -> list[str]:
    if component is Component.API:
        return ["api", "--host", "0.0.0.0", "--port", str(API_PORT)]  # noqa: S104
    return [component.value]


def deployment(t: TenantWorkload, component: Component) -> Manifest:
    env = database_env(t)
    if component is Component.API:
        env.append({"name": "TOLLGATE_JWT_SECRET", "valueFrom": {"secretKeyRef": {
            "name": credentials_secret_name(t), "key": JWT_SECRET_KEY}}})
    container = _container(t, component.value, _args(component), env, _ports(component),
                           _RESOURCES[component])
    if component is Component.API:
        container["readinessProbe"] = {"tcpSocket": {"port": "http"}, "periodSeconds": 5}
    selector = selector_labels(t.name, component.value)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(t, workload_name(t, component), component.value),
        "spec": {
            "replicas": replicas(t, component),
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels(t.name, component.value),
                    # a changed ConfigMap rolls the pods
                    "annotations": {f"{API_GROUP}/config-hash": _digest(config_data(t), 16)},
                },
                "spec": _pod_spec(t, container, terminationGracePeriodSeconds=30),
            },
        },
    }


def service(t: TenantWorkload, component: Component) -> Manifest:
    ports = [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics",
              "protocol": "TCP"}]
    if component is Component.API:
        ports.insert(0, {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"})
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(t, workload_name(t, component), component.value),
        "spec": {"type": "ClusterIP", "selector": selector_labels(t.name, component.value),
                 "ports": ports},
    }


def pod_disruption_budget(t: TenantWorkload, component: Component) -> Manifest:
    """At most one Pod of a component is evicted at a time (drains still proceed)."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(t, workload_name(t, component), component.value),
        "spec": {"maxUnavailable": 1,
                 "selector": {"matchLabels": selector_labels(t.name, component.value)}},
    }


def migration_job(t: TenantWorkload) -> Manifest:
    container = _container(t, "migrate", ["migrate"], migration_env(t), [],
                           {"requests": {"cpu": "100m", "memory": "64Mi"},
                            "limits": {"memory": "128Mi"}})
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(t, migration_job_name(t), MIGRATION),
        "spec": {
            "backoffLimit": 4,
            "activeDeadlineSeconds": 900,
            "template": {
                "metadata": {"labels": labels(t.name, MIGRATION)},
                "spec": _pod_spec(t, container, restartPolicy="Never"),
            },
        },
    }


def legacy_args(t: TenantWorkload) -> list[str]:
    """`tollgate assurance sync` as the Tenant's legacy spec asks for it."""
    legacy = t.spec.legacy
    args = ["assurance", "sync", "--dir", LEGACY_MOUNT, "--unit", legacy.amount_unit]
    if legacy.mode is LegacyMode.RECONCILE:
        args += ["--reconcile", "--tolerance-micros", str(legacy.tolerance_micros),
                 "--tolerance-ppm", str(legacy.tolerance_ppm)]
    return args


def legacy_cronjob(t: TenantWorkload) -> Manifest:
    """The scheduled exchange with the legacy system (`legacy.mode` mirror or reconcile).

    One run at a time (`Forbid`; the sync also takes a per-tenant database lock), in the
    tenant's time zone; the claim is mounted at /legacy. An extract refused (exit code 3) fails
    the Job at once; anything else (a database outage) is retried twice; node drains do not
    count against that.
    """
    legacy = t.spec.legacy
    assert legacy.extracts_claim is not None  # the spec model requires it unless mode is none
    container = _container(t, "sync", legacy_args(t), database_env(t), [],
                           {"requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "512Mi"}})
    container["volumeMounts"].append({"name": "legacy", "mountPath": LEGACY_MOUNT})
    pod = _pod_spec(t, container, restartPolicy="Never")
    pod["volumes"].append({"name": "legacy", "persistentVolumeClaim": {
        "claimName": legacy.extracts_claim}})
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": _meta(t, legacy_cronjob_name(t), LEGACY),
        "spec": {
            "schedule": legacy.schedule,
            "timeZone": t.spec.timezone,
            "concurrencyPolicy": "Forbid",
            # a run missed by up to an hour (controller down) still happens
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels(t.name, LEGACY)},
                "spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 4 * 3600,
                    "podFailurePolicy": {"rules": [
                        {"action": "FailJob", "onExitCodes": {
                            "containerName": "sync", "operator": "In",
                            "values": [LEGACY_EXTRACT_REFUSED]}},
                        {"action": "Ignore", "onPodConditions": [
                            {"type": "DisruptionTarget", "status": "True"}]},
                    ]},
                    "template": {
                        "metadata": {"labels": labels(t.name, LEGACY)},
                        "spec": pod,
                    },
                },
            },
        },
    }


# --------------------------------------------------------------------------- the rest


def config_data(t: TenantWorkload) -> dict[str, str]:
    """Non-secret settings of the workloads, as the `tollgate` command's variables."""
    return {
        "TOLLGATE_TENANT": t.name,
        "TOLLGATE_NATS_URL": t.spec.events.url,
        "TOLLGATE_BATCH_MAX": str(t.spec.charging.batch_max),
        "TOLLGATE_RESERVATION_VALIDITY_S": str(t.spec.charging.reservation_validity_seconds),
        "TOLLGATE_FAILURE_HANDLING": t.spec.charging.failure_handling.value,
        "TOLLGATE_METRICS_PORT": str(METRICS_PORT),
        "TOLLGATE_GRAPHIQL": "true" if t.spec.api.introspection else "false",
        "TOLLGATE_LOG_LEVEL": "INFO",
    }


def config_map(t: TenantWorkload) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(t, config_map_name(t), "config"), "data": config_data(t)}


def service_account(t: TenantWorkload) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(t, service_account_name(t), "workloads"),
            "automountServiceAccountToken": False}


def network_policies(t: TenantWorkload) -> list[Manifest]:
    """Deny everything to and from the tenant's Pods, then allow what they need."""
    pods = {"matchLabels": tenant_pods(t.name)}
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(t, t.child("default-deny"), "network-policy"),
            "spec": {"podSelector": pods, "policyTypes": ["Ingress", "Egress"]}}

    def tcp(port: int) -> dict[str, Any]:
        return {"protocol": "TCP", "port": port}

    egress = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": _meta(t, t.child("allow-egress"), "network-policy"),
              "spec": {"podSelector": pods, "policyTypes": ["Egress"], "egress": [
                  {"ports": [{"protocol": "UDP", "port": 53}, tcp(53)]},  # DNS
                  {"ports": [tcp(5432)]},  # PostgreSQL
                  {"ports": [tcp(4222)]},  # NATS
              ]}}
    api_pods = {"matchLabels": selector_labels(t.name, Component.API.value)}
    api = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": _meta(t, t.child("allow-api-ingress"), "network-policy"),
           "spec": {"podSelector": api_pods, "policyTypes": ["Ingress"],
                    "ingress": [{"ports": [tcp(API_PORT)]}]}}
    metrics = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": _meta(t, t.child("allow-metrics"), "network-policy"),
               "spec": {"podSelector": pods, "policyTypes": ["Ingress"],
                        "ingress": [{"ports": [tcp(METRICS_PORT)]}]}}
    return [deny, egress, api, metrics]


def cnpg_cluster(t: TenantWorkload) -> Manifest:
    """The tenant's PostgreSQL as a CloudNativePG Cluster (database mode `managed`).

    Checked against CloudNativePG's own CRD (tests/operator/test_operator_cnpg.py). The
    database owner `tollgate` runs the migrations with the `<cluster>-app` Secret CloudNativePG
    generates (no `bootstrap.initdb.secret`); the workloads log in as `tollgate_app`, a managed
    role whose password is the operator's basic-auth Secret (CloudNativePG wants its `username`
    to equal the role's name). That role owns nothing and bypasses no row-level security.
    """
    return {
        "apiVersion": CNPG_API_VERSION, "kind": "Cluster",
        "metadata": _meta(t, cnpg_cluster_name(t), "database"),
        "spec": {
            "instances": CNPG_INSTANCES,
            "storage": {"size": CNPG_STORAGE},
            "enableSuperuserAccess": False,
            "bootstrap": {"initdb": {"database": DATABASE_NAME, "owner": DATABASE_NAME}},
            "managed": {"roles": [{
                "name": APP_ROLE, "ensure": "present", "login": True,
                "superuser": False, "bypassrls": False,
                "passwordSecret": {"name": app_role_secret_name(t)},
            }]},
        },
    }


def tenant_children(t: TenantWorkload) -> list[Manifest]:
    """Every child the operator server-side applies, in creation order (dependencies first).

    Generated Secrets and the CloudNativePG Cluster are handled apart: the first must never be
    regenerated, the second may not be installed. The migration Job is applied only once the
    tenant's database resolves (a Job started earlier would spend its retries on nothing).
    The legacy sync CronJob is there only while `legacy.mode` is not none.
    """
    children = [service_account(t), config_map(t), *network_policies(t), migration_job(t)]
    for component in Component:
        children += [deployment(t, component), service(t, component),
                     pod_disruption_budget(t, component)]
    if t.spec.legacy.mode is not LegacyMode.NONE:
        children.append(legacy_cronjob(t))
    return children


def partner_credentials(agreement: str) -> GeneratedSecret:
    """The Secret holding a PartnerAgreement's API key (owned by the agreement)."""
    return GeneratedSecret(f"{agreement}-api-key", keys=(API_KEY,))
