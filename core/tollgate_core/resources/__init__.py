"""Custom resources (Tenant, Offer, PartnerAgreement): the one source of truth for schemas.

The pydantic models here validate YAML in local mode and generate the CRDs' openAPIV3Schema
(see :mod:`tollgate_core.resources.crd`), so a spec accepted by one is accepted by the other;
the status models (:mod:`tollgate_core.resources.status`) are what the operator writes.
"""

from tollgate_core.resources.common import (
    API_GROUP,
    API_VERSION,
    CurrencyCode,
    ResourceError,
    parse_resource,
)
from tollgate_core.resources.offer import Offer, OfferSpec
from tollgate_core.resources.partner import PartnerAgreement, PartnerAgreementSpec
from tollgate_core.resources.status import (
    Condition,
    ConditionStatus,
    OfferStatus,
    PartnerAgreementStatus,
    TenantPhase,
    TenantStatus,
)
from tollgate_core.resources.tenant import Tenant, TenantSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "Condition",
    "ConditionStatus",
    "CurrencyCode",
    "Offer",
    "OfferSpec",
    "OfferStatus",
    "PartnerAgreement",
    "PartnerAgreementSpec",
    "PartnerAgreementStatus",
    "ResourceError",
    "Tenant",
    "TenantPhase",
    "TenantSpec",
    "TenantStatus",
    "parse_resource",
]
