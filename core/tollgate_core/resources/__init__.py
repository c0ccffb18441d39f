"""Custom resource specs (Tenant, Offer, PartnerAgreement): the one source of truth for schemas.

The pydantic models here validate YAML in local mode and generate the CRDs' openAPIV3Schema
(see :mod:`tollgate_core.resources.crd`), so a spec accepted by one is accepted by the other.
"""

from tollgate_core.resources.common import API_GROUP, API_VERSION, ResourceError, parse_resource
from tollgate_core.resources.offer import Offer, OfferSpec
from tollgate_core.resources.partner import PartnerAgreement, PartnerAgreementSpec
from tollgate_core.resources.tenant import Tenant, TenantSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "Offer",
    "OfferSpec",
    "PartnerAgreement",
    "PartnerAgreementSpec",
    "ResourceError",
    "Tenant",
    "TenantSpec",
    "parse_resource",
]
