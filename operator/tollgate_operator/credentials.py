"""Secrets whose values the operator generates (API keys, passwords): created once, kept.

Invariant: an existing value is never replaced. A Secret that exists is only completed with
keys it lacks, so a restart, a retry or a concurrent reconcile cannot rotate a key a partner
or a database already uses.
"""

from __future__ import annotations

import base64
import secrets

from tollgate_operator import manifests
from tollgate_operator.kube import KubeClient
from tollgate_operator.manifests import GeneratedSecret, Owner

TOKEN_BYTES = 32
"""Entropy of each generated value (256 bits), URL-safe base64 encoded."""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


async def ensure_secret(kube: KubeClient, owner: Owner, namespace: str, tenant: str,
                        component: str, generated: GeneratedSecret) -> dict[str, str]:
    """Create the Secret with fresh values if it is missing; add only keys it lacks.

    Returns the values of the generated keys as the Secret now holds them.
    """
    existing = await kube.get("v1", "Secret", namespace, generated.name)
    if existing is None:
        values = {key: new_token() for key in generated.keys}
        manifest = manifests.secret(owner, namespace, tenant, component, generated, values)
        if await kube.create(manifest) is not None:
            return values
        # Someone created it between our read and write: complete theirs instead.
        existing = await kube.get("v1", "Secret", namespace, generated.name)
        if existing is None:
            raise RuntimeError(f"Secret {namespace}/{generated.name} vanished while created")
    data = existing.get("data") or {}
    present = {key: base64.b64decode(data[key]).decode() for key in generated.keys
               if key in data}
    missing = {key: new_token() for key in generated.keys if key not in present}
    if missing:
        await kube.merge_patch("v1", "Secret", namespace, generated.name,
                               {"stringData": missing})
    return {**present, **missing}
