"""`tollgate apply -f`: validate resource YAML with the CRD schema models and reconcile it."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tollgate_core import catalog_service
from tollgate_core.resources import Offer, PartnerAgreement, ResourceError, Tenant, parse_resource
from tollgate_core.store import partner_keys
from tollgate_core.store.db import Pool


@dataclass
class ApplyReport:
    tenants: list[str] = field(default_factory=list)
    revisions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    partner_keys: dict[str, dict[str, str]] = field(default_factory=dict)
    """tenant → agreement → API key, for agreements that got their first key now (shown
    once: only the key's digest is stored)."""


def yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
    return [path]


def load_documents(path: Path) -> list[Tenant | Offer | PartnerAgreement]:
    """Parse and validate every document; raise ResourceError naming file, field and rule."""
    resources: list[Tenant | Offer | PartnerAgreement] = []
    errors: list[str] = []
    for file in yaml_files(path):
        try:
            documents: list[Any] = [d for d in yaml.safe_load_all(file.read_text()) if d]
        except yaml.YAMLError as exc:
            errors.append(f"{file}: not valid YAML: {exc}")
            continue
        except OSError as exc:
            errors.append(f"{file}: {exc.strerror}")
            continue
        for index, document in enumerate(documents):
            source = f"{file}" if len(documents) == 1 else f"{file}[{index}]"
            try:
                resource = parse_resource(document, source)
            except ResourceError as exc:
                errors.extend(f"{exc.source}: {e}" for e in exc.errors)
                continue
            assert isinstance(resource, Tenant | Offer | PartnerAgreement)
            resources.append(resource)
    if errors:
        raise ResourceError(str(path), errors)
    return resources


async def apply_resources(pool: Pool, resources: list[Tenant | Offer | PartnerAgreement]
                          ) -> ApplyReport:
    """Tenants first, then each tenant's offers and agreements as one catalog revision; a
    published agreement without an API key gets one (what the operator's Secret is in
    Kubernetes)."""
    report = ApplyReport()
    offers: dict[str, dict[str, Any]] = defaultdict(dict)
    partners: dict[str, dict[str, Any]] = defaultdict(dict)
    for resource in resources:
        if isinstance(resource, Tenant):
            await catalog_service.apply_tenant(pool, resource.metadata.name, resource.spec)
            report.tenants.append(resource.metadata.name)
        elif isinstance(resource, Offer):
            offers[resource.spec.tenant_ref.name][resource.metadata.name] = resource.spec
        else:
            partners[resource.spec.tenant_ref.name][resource.metadata.name] = resource.spec
    for tenant in sorted(set(offers) | set(partners)):
        try:
            result = await catalog_service.apply_catalog(pool, tenant, offers[tenant],
                                                         partners[tenant])
        except catalog_service.UnknownTenant as exc:
            report.errors.append(str(exc))
            continue
        if result.valid and result.revision is not None:
            report.revisions[tenant] = result.revision
            issued = await partner_keys.issue_missing(pool, tenant, partners[tenant])
            if issued:
                report.partner_keys[tenant] = issued
        report.errors.extend(result.errors)
    return report
