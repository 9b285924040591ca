"""Building blocks of the OpenAPI document, shared by its parts."""

from __future__ import annotations

from typing import Any

from abgate.control.openapi_models import content
from abgate.control.payloads import Error


def json_content(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR = content(Error, "Error")
