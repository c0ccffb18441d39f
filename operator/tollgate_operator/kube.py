"""The operator's own Kubernetes API calls (besides Kopf's watches): one small async client.

The only module that speaks HTTP to the API server. Credentials come from the `kubernetes`
client's config loaders (in-cluster ServiceAccount, kubeconfig with tokens, certificates or
exec plugins) into a fresh configuration object, never the library's global default; Kopf
logs in with the same function, so both see the same identity. Writes are server-side apply
with one field manager, so applying the same manifest twice changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import kopf

Manifest = dict[str, Any]

# Kinds the operator reads or writes, and their resource (plural) names.
PLURALS: Mapping[str, str] = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments",
    "Job": "jobs",
    "CronJob": "cronjobs",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "Cluster": "clusters",
    "Tenant": "tenants",
    "Offer": "offers",
    "PartnerAgreement": "partneragreements",
}


TYPED_PATCH_FAILURE = "failed to create typed patch object"


class KubeError(Exception):
    """The API server refused a request; `status` is the HTTP status."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        """Outages and throttling, as opposed to a request the server will never accept.

        Server-side apply answers a field the schema does not declare with HTTP 500 ("failed to
        create typed patch object ... field not declared in schema"), whatever the request's
        field validation (kube-apiserver 1.35, e.g. a CloudNativePG older than our manifest):
        no retry changes that.
        """
        if self.status == 500 and TYPED_PATCH_FAILURE in self.message:
            return False
        return self.status in (409, 429) or self.status >= 500


def login(kubeconfig: Path | None = None) -> kopf.ConnectionInfo:
    """Credentials: `kubeconfig` if given, else in-cluster, else the default kubeconfig."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration,
            persist_config=False)
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration, persist_config=False)
    header = (configuration.get_api_key_with_prefix("BearerToken")
              or configuration.get_api_key_with_prefix("authorization"))
    scheme, token = None, None
    if header:
        parts = str(header).split(" ", 1)
        scheme, token = ("Bearer", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
    )


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(info.ca_path) if info.ca_path else None,
        cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data)
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if info.certificate_path and info.private_key_path:
        context.load_cert_chain(str(info.certificate_path), str(info.private_key_path))
    return context


def resource_path(api_version: str, kind: str, namespace: str | None = None,
                  name: str | None = None, subresource: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}" if namespace else base
    path += f"/{PLURALS[kind]}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def manifest_path(manifest: Mapping[str, Any]) -> str:
    meta = manifest["metadata"]
    return resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"),
                         meta["name"])


class KubeClient:
    """Async JSON calls to the API server; re-logs in once when a token expired (401)."""

    def __init__(self, credentials: Callable[[], kopf.ConnectionInfo],
                 field_manager: str, timeout_s: float = 30.0) -> None:
        self._credentials = credentials
        self._field_manager = field_manager
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None
        self._login = asyncio.Lock()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session, self._info = self._session, None, None
        if session is not None:
            await session.close()

    async def _connect(self) -> tuple[aiohttp.ClientSession, kopf.ConnectionInfo]:
        async with self._login:
            if self._session is None or self._info is None:
                # reading kubeconfig or token files, maybe running an exec plugin: off the loop
                info = await asyncio.to_thread(self._credentials)
                connector = aiohttp.TCPConnector(ssl=_ssl_context(info), limit=32)
                self._session = aiohttp.ClientSession(connector=connector,
                                                      timeout=self._timeout)
                self._info = info
            return self._session, self._info

    async def request(self, method: str, path: str, *, body: object | None = None,
                      content_type: str = "application/json",
                      params: Mapping[str, str] | None = None) -> Any:
        """One call; returns the decoded JSON body; raises :class:`KubeError` on >= 400."""
        for attempt in (1, 2):
            session, info = await self._connect()
            headers = {"Accept": "application/json", "Content-Type": content_type}
            if info.token:
                headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
            data = None if body is None else json.dumps(body)
            async with session.request(method, info.server.rstrip("/") + path, data=data,
                                       headers=headers, params=params) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    await self.close()  # the token rotated: log in again, once
                    continue
                if response.status >= 400:
                    try:
                        message = str(json.loads(text).get("message", text))
                    except ValueError:
                        message = text
                    raise KubeError(response.status, method, path, message[:2000])
                return json.loads(text) if text else None
        raise AssertionError("unreachable")  # pragma: no cover

    async def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply: create or converge our fields of the object; idempotent.

        Never prunes silently: a field the object's schema does not declare fails the whole
        apply (see :attr:`KubeError.retryable`).
        """
        result: Manifest = await self.request(
            "PATCH", manifest_path(manifest), body=manifest,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": self._field_manager, "force": "true"})
        return result

    async def get(self, api_version: str, kind: str, namespace: str | None,
                  name: str) -> Manifest | None:
        """The object, or None when it does not exist."""
        try:
            result: Manifest = await self.request(
                "GET", resource_path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: str) -> list[Manifest]:
        result = await self.request("GET", resource_path(api_version, kind, namespace),
                                    params={"labelSelector": label_selector})
        return list(result.get("items") or [])

    async def create(self, manifest: Manifest) -> Manifest | None:
        """Create the object; None when one of that name already exists."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
        try:
            result: Manifest = await self.request("POST", path, body=manifest,
                                                  params={"fieldManager": self._field_manager})
        except KubeError as exc:
            if exc.status == 409:
                return None
            raise
        return result

    async def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any], subresource: str | None = None) -> None:
        await self.request("PATCH", resource_path(api_version, kind, namespace, name,
                                                  subresource),
                           body=patch, content_type="application/merge-patch+json",
                           params={"fieldManager": self._field_manager})

    async def delete(self, api_version: str, kind: str, namespace: str | None,
                     name: str) -> bool:
        """Delete in the background (dependents by the garbage collector); False if absent."""
        try:
            await self.request("DELETE", resource_path(api_version, kind, namespace, name),
                               body={"propagationPolicy": "Background"})
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def serves(self, api_version: str) -> bool:
        """Whether the API server serves `group/version` (e.g. an add-on's CRDs installed)."""
        try:
            await self.request("GET", f"/apis/{api_version}")
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True
