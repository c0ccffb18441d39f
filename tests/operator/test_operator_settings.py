"""Operator settings → Kopf settings, and the metrics endpoint; pure, no API server."""

from __future__ import annotations

import httpx
import kopf
import pytest

from tollgate_core.local.servers import free_port
from tollgate_operator.metrics import OperatorMetrics
from tollgate_operator.outcome import Outcome
from tollgate_operator.registry import kopf_settings
from tollgate_operator.settings import PeeringMode, PeeringSettings, Settings


@pytest.mark.parametrize(("mode", "standalone", "mandatory"), [
    (PeeringMode.AUTO, False, False),
    (PeeringMode.STANDALONE, True, False),
    (PeeringMode.MANDATORY, False, True),
])
def test_peering_modes_map_onto_kopf(mode: PeeringMode, standalone: bool, mandatory: bool
                                     ) -> None:
    settings = Settings(image="x", namespaces=("market-de",),
                        peering=PeeringSettings(mode=mode, name="tg", priority=100))
    config = kopf_settings(settings)
    assert (config.peering.standalone, config.peering.mandatory) == (standalone, mandatory)
    assert (config.peering.name, config.peering.priority) == ("tg", 100)
    assert config.peering.clusterwide is False  # namespaced operator, namespaced peering


def test_kopf_bookkeeping_lives_in_annotations_with_our_finalizer() -> None:
    config = kopf_settings(Settings(image="x"))
    assert config.persistence.finalizer == "bss.tollgate.dev/finalizer"
    assert isinstance(config.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(config.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert config.peering.clusterwide is True


async def test_metrics_count_reconciles_and_are_served() -> None:
    metrics = OperatorMetrics()

    async def ok() -> Outcome:
        return Outcome()

    async def later() -> Outcome:
        return Outcome(retry_after_s=1.0)

    await metrics.track("Offer", ok())
    await metrics.track("Offer", later())
    port = free_port()
    metrics.serve(port, host="127.0.0.1")
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        metrics.close()
    assert 'tollgate_operator_reconciles_total{kind="Offer",result="ok"} 1.0' in text
    assert 'tollgate_operator_reconciles_total{kind="Offer",result="retry"} 1.0' in text
    assert 'tollgate_operator_reconcile_seconds_count{kind="Offer"} 2.0' in text
