"""Entry points: `run(settings)` for `tollgate operator`, `operate(...)` for embedding/tests."""

from __future__ import annotations

import asyncio
import threading

import kopf

from tollgate_operator.registry import build_registry, kopf_settings
from tollgate_operator.runtime import open_runtime
from tollgate_operator.settings import Settings

StopFlag = asyncio.Event | threading.Event | asyncio.Future[object]


async def operate(settings: Settings, *, stop_flag: StopFlag | None = None,
                  ready_flag: StopFlag | None = None) -> None:
    """Run the operator in the current event loop until `stop_flag` is set (or a signal)."""
    async with open_runtime(settings) as runtime:
        await kopf.operator(
            registry=build_registry(settings, runtime),
            settings=kopf_settings(settings),
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            liveness_endpoint=settings.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )


def run(settings: Settings) -> None:
    """Run the operator until SIGINT/SIGTERM (Kopf installs the handlers)."""
    asyncio.run(operate(settings))
