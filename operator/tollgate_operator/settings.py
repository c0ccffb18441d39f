"""Operator settings: read once by the entrypoint (`tollgate operator`) and passed down.

Nothing here reads the environment; the CLI maps flags and variables onto these dataclasses.
Field docstrings give the unit and why the default is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

FIELD_MANAGER = "tollgate-operator"
"""Server-side apply field manager, and the `app.kubernetes.io/managed-by` label value."""


class PeeringMode(StrEnum):
    """How the operator coordinates with other instances of itself (Kopf peering)."""

    AUTO = "auto"
    """Use the KopfPeering/ClusterKopfPeering object named `peering.name` if it exists,
    else run standalone (Kopf logs that it found none)."""
    STANDALONE = "standalone"
    """Never look for peers (a single replica, or tests)."""
    MANDATORY = "mandatory"
    """Refuse to run without the peering CRDs and object (production with more than one
    candidate replica)."""


@dataclass(frozen=True, slots=True)
class PeeringSettings:
    """Kopf peering: operators see each other and the lower priority pauses.

    Not a leader election: two operators of the *same* priority both pause. One active
    replica comes from the chart (`replicas: 1`, `strategy: Recreate`); peering keeps a
    second operator (a rollout overlap, a developer's `--priority 100` run) from handling the
    same objects at once.
    """

    mode: PeeringMode = PeeringMode.AUTO
    name: str = "tollgate-operator"
    """Name of the KopfPeering (namespaced) or ClusterKopfPeering (cluster-wide) object."""
    priority: int = 0
    """Higher wins; operators that see a higher priority peer pause until it is gone."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the operator needs to run; built by the CLI, passed to `main.run`."""

    image: str
    """Container image of the tenant workloads (charging, billing, api, migrations); its
    entrypoint is the `tollgate` command."""
    namespaces: tuple[str, ...] = ()
    """Namespaces (or Kopf glob patterns such as `market-*`) to serve; empty means the whole
    cluster. Namespaced mode needs only namespaced RBAC."""
    kubeconfig: Path | None = None
    """Kubeconfig to use; None means the in-cluster ServiceAccount, then the default
    kubeconfig (`$KUBECONFIG` or `~/.kube/config`, as the `kubernetes` client finds it)."""
    peering: PeeringSettings = field(default_factory=PeeringSettings)
    resync_interval_s: float = 30.0
    """Each Tenant is fully reconciled at least this often (drift of children the operator does
    not watch: Services, ConfigMaps, NetworkPolicies...). Deployments and Jobs are watched,
    so their drift and readiness are handled within a second."""
    tenant_wait_s: float = 10.0
    """Delay before retrying an Offer or PartnerAgreement whose Tenant (or its database) is
    not ready yet: GitOps tools apply documents in any order."""
    revalidate_interval_s: float = 60.0
    """How often an Offer or PartnerAgreement that refers to something missing (another offer,
    a partner) is validated again: the reference may be applied later. Spec errors are never
    retried; they wait for a new generation."""
    database_pool_max: int = 4
    """Connections per tenant database; publishing serialises on the tenant row anyway."""
    metrics_port: int | None = None
    """Port of the Prometheus `/metrics` endpoint; None: not served."""
    liveness_endpoint: str | None = None
    """Kopf liveness probe URL to serve, e.g. `http://0.0.0.0:8080/healthz`; None: none."""
    field_manager: str = FIELD_MANAGER
    """Server-side apply field manager name of every object the operator writes."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
