"""Shared pieces of the resource models: base config, metadata, CEL rules, parsing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "bss.tollgate.dev"
API_VERSION = "v1alpha1"

# A decimal amount in major currency units, written as a string so YAML never makes it a float.
Amount = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$",
        description="Decimal amount in major currency units, as a string (e.g. \"19.99\"); "
        "at most 6 decimal places.",
    ),
]
Percent = Annotated[
    str,
    Field(
        pattern=r"^(100(\.0{1,4})?|[0-9]{1,2}(\.[0-9]{1,4})?)$",
        description="Percentage between 0 and 100 as a decimal string (e.g. \"19\", \"7.5\").",
    ),
]
Name = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description="A DNS-1123 label: lower-case letters, digits and '-'.",
    ),
]


@dataclass(frozen=True)
class Cel:
    """A cross-field rule: `rule` is the CEL the API server runs; the model checks the same."""

    rule: str
    message: str


class Spec(BaseModel):
    """Base of every spec model: camelCase aliases, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )
    cel_rules: ClassVar[tuple[Cel, ...]] = ()


class Ref(Spec):
    """A reference to another resource in the same namespace."""

    name: Name = Field(description="Name of the referenced resource.")


class ValidFor(Spec):
    """A validity period (TMF TimePeriod); `end` is exclusive."""

    start: datetime | None = Field(default=None, description="Start (RFC 3339), inclusive.")
    end: datetime | None = Field(default=None, description="End (RFC 3339), exclusive.")

    cel_rules: ClassVar[tuple[Cel, ...]] = (
        Cel(
            "!has(self.start) || !has(self.end) || timestamp(self.start) < timestamp(self.end)",
            "validFor.start must be before validFor.end",
        ),
    )

    @model_validator(mode="after")
    def _start_before_end(self) -> ValidFor:
        if self.start is not None and self.end is not None and not self.start < self.end:
            raise ValueError("validFor.start must be before validFor.end")
        return self


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata that local mode reads."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Name
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    generation: int = 1


class ResourceError(ValueError):
    """A resource that is not valid; `errors` name the field path and the rule broken."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


def describe_validation_error(exc: ValidationError, prefix: str = "spec") -> list[str]:
    """Turn pydantic errors into 'field.path: rule' lines a platform engineer can act on."""
    lines = []
    for err in exc.errors():
        parts = [prefix] if prefix else []
        path = ".".join([*parts, *(str(p) for p in err["loc"])]) or "document"
        lines.append(f"{path}: {err['msg']}")
    return lines


def parse_resource(document: dict[str, Any], source: str = "<input>") -> BaseModel:
    """Validate one YAML/JSON document as a Tollgate resource; raise ResourceError otherwise."""
    from tollgate_core.resources.offer import Offer
    from tollgate_core.resources.partner import PartnerAgreement
    from tollgate_core.resources.tenant import Tenant

    kinds: dict[str, type[BaseModel]] = {
        "Tenant": Tenant,
        "Offer": Offer,
        "PartnerAgreement": PartnerAgreement,
    }
    if not isinstance(document, dict):
        raise ResourceError(source, ["document: must be a mapping"])
    api_version = document.get("apiVersion")
    if api_version != f"{API_GROUP}/{API_VERSION}":
        raise ResourceError(source, [
            f"apiVersion: must be {API_GROUP}/{API_VERSION}, got {api_version!r}"])
    kind = document.get("kind")
    model = kinds.get(str(kind))
    if model is None:
        raise ResourceError(source, [f"kind: must be one of {sorted(kinds)}, got {kind!r}"])
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ResourceError(source, describe_validation_error(exc, prefix="")) from exc


class Resource(BaseModel):
    """Envelope shared by the three kinds: apiVersion, kind, metadata, spec."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    status: dict[str, Any] | None = None
