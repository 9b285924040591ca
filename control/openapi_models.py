"""The OpenAPI document's schemas from the payload models (control/payloads.py).

The document's parts name a model where a schema goes (`"schema": SetFlagBody`); `resolve`
walks the finished document once, asks pydantic for every model's JSON Schema in one call
(request bodies as validated, answers as encoded), puts them under components.schemas and
each model's place becomes a `$ref`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaMode,
    JsonSchemaValue,
    models_json_schema,
)

REF = "#/components/schemas/{model}"


class _Schema(GenerateJsonSchema):
    """No `title` on every property: the field's name already says it; no null default."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        """No `default: null`: a field left out is not given (or not answered), which is
        not the value null (a field that takes null says so in its type)."""
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            del json_schema["default"]
        return json_schema


def content(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
    """A JSON answer encoded by `model`."""
    return {"description": description, "content": {"application/json": {"schema": model}}}


def request_body(
    model: type[BaseModel] | dict[str, Any], *, required: bool = True
) -> dict[str, Any]:
    """A body validated by `model` (or a schema naming models: `{"oneOf": [A, B]}`)."""
    return {"required": required, "content": {"application/json": {"schema": model}}}


Mode = Literal["validation", "serialization"]


def resolve(document: dict[str, Any]) -> None:
    """Every model in `document` (in place) becomes a `$ref` to its schema in components."""
    found: dict[Key, None] = {}
    _walk(document, "serialization", lambda model, mode: found.setdefault((model, mode)))
    refs, definitions = models_json_schema(list(found), ref_template=REF, schema_generator=_Schema)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(definitions.get("$defs", {}))
    _walk(document, "serialization", lambda model, mode: refs[(model, mode)])


Key = tuple[type[BaseModel], JsonSchemaMode]


def _walk(node: Any, mode: Mode, visit: Callable[[type[BaseModel], Mode], Any]) -> None:
    """Calls `visit` on each model in `node` (bodies validated, answers encoded) and puts
    what it returns in the model's place."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in list(items):
        inner: Mode = "validation" if key == "requestBody" else mode
        if isinstance(value, type) and issubclass(value, BaseModel):
            node[key] = visit(value, inner) or value
        elif isinstance(value, dict | list):
            _walk(value, inner, visit)
