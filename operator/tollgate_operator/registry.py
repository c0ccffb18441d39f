"""One explicit Kopf registry and Kopf settings, built from our settings (no import-time state)."""

from __future__ import annotations

from typing import Any

import kopf

from tollgate_core.resources import API_GROUP
from tollgate_operator import catalog_handlers, tenant_handlers
from tollgate_operator.kube import login
from tollgate_operator.runtime import Runtime
from tollgate_operator.settings import PeeringMode, Settings

STORAGE_PREFIX = f"operator.{API_GROUP.removeprefix('bss.')}"
"""Prefix of Kopf's bookkeeping annotations (`operator.tollgate.dev/...`): progress and the
last handled spec live in annotations, so `.status` holds only the public API."""


def build_registry(settings: Settings, runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def log_in(**_: Any) -> kopf.ConnectionInfo:
        return login(settings.kubeconfig)

    tenant_handlers.register(registry, settings, runtime)
    catalog_handlers.register(registry, settings, runtime)
    return registry


def kopf_settings(settings: Settings) -> kopf.OperatorSettings:
    config = kopf.OperatorSettings()
    config.persistence.finalizer = f"{API_GROUP}/finalizer"
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration")
    config.peering.name = settings.peering.name
    config.peering.priority = settings.peering.priority
    config.peering.standalone = settings.peering.mode is PeeringMode.STANDALONE
    config.peering.mandatory = settings.peering.mode is PeeringMode.MANDATORY
    config.peering.clusterwide = settings.clusterwide
    return config
