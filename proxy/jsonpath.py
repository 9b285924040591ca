"""The small JSONPath subset abgate uses (`$.decision`, `$.items[0].score`), pre-parsed by the
config into steps. Shared by shadow comparison and per-experiment metrics."""

from __future__ import annotations

from typing import Any

from abgate.config.model import JsonPath

MISSING: Any = object()


def extract(document: Any, path: JsonPath) -> Any:
    """The value at `path`, or MISSING."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(document, list) or not -len(document) <= step < len(document):
                return MISSING
            document = document[step]
        else:
            if not isinstance(document, dict) or step not in document:
                return MISSING
            document = document[step]
    return document
