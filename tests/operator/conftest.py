"""Session fixtures for operator tests: a real kube-apiserver serving Tollgate's CRDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.harness.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "crds").glob("*.yaml"))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd, kube-apiserver and controllers with the checked-in CRDs Established.

    Builds the envtest binaries first when they are missing (see tests/harness).
    """
    assert CRDS, f"no CRDs in {ROOT / 'crds'}: run `make crds`"
    with ControlPlane(crds=CRDS) as plane:
        yield plane


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """A `kubernetes` client authenticated as cluster admin."""
    # Parts of the `kubernetes` package carry no type hints: hence the ignores.
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(control_plane.kubeconfig))
    try:
        yield api
    finally:
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def custom_objects(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture(scope="session")
def namespace(api_client: client.ApiClient) -> str:
    """The namespace of the examples, created once."""
    name = "market-de"
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    client.CoreV1Api(api_client).create_namespace(body)
    return name
