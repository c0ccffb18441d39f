"""The operator's long-lived objects, opened once per run and closed at its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

from tollgate_operator.batching import PublishBatcher
from tollgate_operator.catalog_logic import CatalogController
from tollgate_operator.databases import CatalogStores
from tollgate_operator.kube import KubeClient, login
from tollgate_operator.metrics import OperatorMetrics
from tollgate_operator.settings import Settings
from tollgate_operator.tenant_logic import TenantController


@dataclass(frozen=True, slots=True)
class Runtime:
    """API client, database pools, metrics and the controllers built on them."""

    kube: KubeClient
    stores: CatalogStores
    tenants: TenantController
    catalog: CatalogController
    metrics: OperatorMetrics


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Build the runtime inside the running event loop; close pools and sessions after."""
    kube = KubeClient(partial(login, settings.kubeconfig), settings.field_manager)
    stores = CatalogStores(kube, settings.database_pool_max)
    batcher = PublishBatcher()
    metrics = OperatorMetrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    try:
        yield Runtime(kube, stores, TenantController(settings, kube, stores),
                      CatalogController(settings, kube, stores, batcher), metrics)
    finally:
        metrics.close()
        await batcher.close()
        await stores.close()
        await kube.close()
