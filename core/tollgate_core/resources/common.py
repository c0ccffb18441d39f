"""Shared pieces of the resource models: base config, metadata, CEL rules, parsing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from tollgate_core.domain.money import ISO_4217_CODES

API_GROUP = "bss.tollgate.dev"
API_VERSION = "v1alpha1"

# A decimal amount in major currency units, written as a string so YAML never makes it a float.
Amount = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$",
        max_length=19,
        description="Decimal amount in major currency units, as a string (e.g. \"19.99\"); "
        "at most 6 decimal places.",
    ),
]
Percent = Annotated[
    str,
    Field(
        pattern=r"^(100(\.0{1,4})?|[0-9]{1,2}(\.[0-9]{1,4})?)$",
        max_length=8,
        description="Percentage between 0 and 100 as a decimal string (e.g. \"19\", \"7.5\").",
    ),
]
Multiplier = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{1,4}(\.[0-9]{1,4})?$",
        max_length=9,
        description="Price multiplier in percent as a decimal string: \"100\" is the tariff "
        "price, \"50\" half of it, \"150\" half as much again.",
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


def validations(rules: Sequence[Cel]) -> list[JsonDict]:
    """*rules* as the `x-kubernetes-validations` of a CRD schema node."""
    return [{"rule": rule.rule, "message": rule.message} for rule in rules]


ISO_4217_RULE = Cel(
    "self in [" + ", ".join(f"'{code}'" for code in sorted(ISO_4217_CODES)) + "]",
    "must be an ISO 4217 currency code (e.g. EUR)",
)


def _iso_4217(value: str) -> str:
    if value not in ISO_4217_CODES:
        raise ValueError(f"{ISO_4217_RULE.message}, got {value!r}")
    return value


# An ISO 4217 code: the model checks the standard's table, the CRD runs ISO_4217_RULE.
CurrencyCode = Annotated[
    str,
    Field(pattern=r"^[A-Z]{3}$", max_length=3,
          json_schema_extra={"x-kubernetes-validations": validations([ISO_4217_RULE])}),
    AfterValidator(_iso_4217),
]


@dataclass(frozen=True)
class ListMapKeys:
    """Marks a list of objects as a map keyed by `keys` (camelCase field names).

    Use as `Annotated[list[Item], ListMapKeys("name")]`: the model refuses two items with the
    same key, and the CRD says `x-kubernetes-list-type: map`, so the API server refuses them too
    and server-side apply merges the list item by item.
    """

    keys: tuple[str, ...]

    def __init__(self, *keys: str) -> None:
        object.__setattr__(self, "keys", keys)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._unique, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["x-kubernetes-list-type"] = "map"
        json_schema["x-kubernetes-list-map-keys"] = list(self.keys)
        return json_schema

    def _unique(self, items: list[BaseModel]) -> list[BaseModel]:
        seen: set[tuple[Any, ...]] = set()
        for item in items:
            attributes = {field.alias or name: name
                          for name, field in type(item).model_fields.items()}
            key = tuple(getattr(item, attributes[k]) for k in self.keys)
            if key in seen:
                shown = ", ".join(f"{k}={v!r}" for k, v in zip(self.keys, key, strict=True))
                raise ValueError(f"{shown} appears twice; each {'+'.join(self.keys)} may "
                                 "appear once")
            seen.add(key)
        return items


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
