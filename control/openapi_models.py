"""The OpenAPI document's schemas from the payload models (control/payloads.py).

The document's parts name a model where a schema goes (`"schema": SetFlagBody`); `resolve`
walks the finished document once, asks pydantic for every model's JSON Schema in one call
(request bodies as validated, answers as encoded), puts them under components.schemas and
each model's place becomes a `$ref`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

REF = "#/components/schemas/{model}"


class _Schema(GenerateJsonSchema):
    """No `title` on every property: the field's name already says it."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def content(model: type[BaseModel], description: str = "OK") -> dict[str, Any]:
    """A JSON answer encoded by `model`."""
    return {"description": description, "content": {"application/json": {"schema": model}}}


def request_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": model}}}


Mode = Literal["validation", "serialization"]


def resolve(document: dict[str, Any]) -> None:
    """Every model in `document` (in place) becomes a `$ref` to its schema in components."""
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    _collect(document, "serialization", found)
    refs, definitions = models_json_schema(list(found), ref_template=REF, schema_generator=_Schema)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(definitions.get("$defs", {}))
    _replace(document, "serialization", refs)


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _collect(
    node: Any, mode: Mode, found: dict[tuple[type[BaseModel], JsonSchemaMode], None]
) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            inner: Mode = "validation" if key == "requestBody" else mode
            if _is_model(value):
                found[(value, inner)] = None
            else:
                _collect(value, inner, found)
    elif isinstance(node, list):
        for item in node:
            _collect(item, mode, found)


def _replace(node: Any, mode: Mode, refs: dict[tuple[Any, JsonSchemaMode], Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            inner: Mode = "validation" if key == "requestBody" else mode
            if _is_model(value):
                node[key] = refs[(value, inner)]
            else:
                _replace(value, inner, refs)
    elif isinstance(node, list):
        for item in node:
            _replace(item, mode, refs)
