"""The control API's payloads declared once, as pydantic models: a `Body` validates a request
body, an `Answer` encodes a response, and control/openapi_models.py describes both in the
OpenAPI document from the same declaration.

A refusal stays the API's own `{"error": "<field>: <why>"}` (a 400): pydantic's
ValidationError is mapped here, once, naming the field by its key path, in our words (never
pydantic's text), with the value refused as JSON writes it, cut short (`http.shown`). A
field says what it expects with `Expected(...)` in its annotation; a check pydantic cannot
state (a percentage's two decimals, a version written 3.0) raises `refuse(why)` from its
validator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from abgate.config.fields import SHOWN, shown
from abgate.control.http import ApiError, json_response, parse_json


class Expected:
    """What a field expects, in words: `<field>: expected <what>` when its value is refused
    (`got`: with the value refused, `, got 1.5`), `<field>: <missing>` when it is left out
    (default `required`)."""

    __slots__ = ("got", "missing", "what")

    def __init__(self, what: str, *, missing: str = "required", got: bool = False) -> None:
        self.what = what
        self.missing = missing
        self.got = got


class Body(BaseModel):
    """A request body: a JSON object with only the declared fields, each of the declared
    type as JSON writes it (strict: "5" is not 5, 1 is not true)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Answer(BaseModel):
    """A response body, built from the domain's objects (attributes read) and encoded once."""

    model_config = ConfigDict(from_attributes=True, frozen=True, serialize_by_alias=True)


class Error(Answer):
    error: str


B = TypeVar("B", bound=Body)


def whole(value: Any) -> Any:
    """A whole number written 2.0 as 2, as JSON Schema's `integer` takes it (a before
    validator: what is not a whole number goes on to be refused as it was sent)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**63:
        return int(value)
    if isinstance(value, Decimal) and value.is_finite() and abs(value) <= 2**63:
        return int(value) if value == value.to_integral_value() else value
    return value


def refuse(why: str) -> PydanticCustomError:
    """A refusal in our own words, for a validator to raise (the field is named for it)."""
    return PydanticCustomError("abgate", "{why}", {"why": why})


async def read_object(request: web.Request, *, exact: bool = False) -> dict[str, Any]:
    """The body as a JSON object: not JSON, too deep or not an object is refused as before
    (control/http.py's `parse_json`); an empty body is `{}`. `exact` keeps decimal numbers
    as written (Decimal) for validators that judge digits."""
    raw = await request.read()
    data = parse_json(raw, exact=exact) if raw.strip() else {}
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def validate(model: type[B], data: dict[str, Any], *, where: str = "") -> B:
    """`data` as `model`; a refusal names the field below `where` (an item's `[3]`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, refusal(exc, model, where)) from None


async def read_body(request: web.Request, model: type[B], *, exact: bool = False) -> B:
    return validate(model, await read_object(request, exact=exact))


def answer(payload: Answer, status: int = 200, *, as_recorded: bool = False) -> web.Response:
    """`payload` encoded; `as_recorded`: a field left out where it was built from (a stored
    entry without it) stays out, rather than answered as its default."""
    return json_response(payload.model_dump(mode="json", exclude_unset=as_recorded), status)


def refusal(exc: ValidationError, model: type[BaseModel], item: str = "") -> str:
    """One sentence naming the field: unknown fields first (as the API always said), else the
    first problem pydantic found, in our words, with the value refused as JSON writes it
    and cut short (`http.shown`). `item`: where the object is in the body (`[3]`)."""
    errors = exc.errors(include_url=False)
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        at = unknown[0]["loc"][:-1]
        names = sorted(_cut(str(e["loc"][-1])) for e in unknown if e["loc"][:-1] == at)
        more = len(names) - NAMED
        listed = ", ".join(names[:NAMED]) + (f" and {more:,} more" if more > 0 else "")
        fields = _model_at(model, at)
        known = f" (expected: {', '.join(sorted(fields.model_fields))})" if fields else ""
        prefix = f"{_where(item, at)}: " if item or at else ""
        return f"{prefix}unknown field(s): {listed}{known}"
    first = errors[0]
    where = _where(item, first["loc"]) or "body"
    if first["type"] == "abgate":
        return f"{where}: {first['ctx']['why']}"
    expected = _expected(model, first["loc"])
    if first["type"] == "missing":
        return f"{where}: {expected.missing if expected else 'required'}"
    if expected is not None:
        got = f", got {shown(first['input'])}" if expected.got else ""
        return f"{where}: expected {expected.what}{got}"
    return f"{where}: {_words(first)}, got {shown(first['input'])}"


NAMED = 10  # unknown fields a refusal names: a 1 MiB body may hold 100,000


# pydantic's error types in our words ({...}: the error's context)
_WORDS = {
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "list_type": "expected an array",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "literal_error": "expected {expected}",
    "enum": "expected {expected}",
    "greater_than": "expected a number above {gt}",
    "greater_than_equal": "expected a number from {ge}",
    "less_than": "expected a number below {lt}",
    "less_than_equal": "expected a number up to {le}",
    "string_too_short": "expected at least {min_length} character(s)",
    "string_too_long": "expected at most {max_length} characters",
    "too_short": "expected at least {min_length} item(s)",
    "too_long": "expected at most {max_length} items",
}


def _words(error: ErrorDetails) -> str:
    """A pydantic error in our words: Python's quotes and class names left out."""
    context = {k: str(v).replace("'", '"') for k, v in (error.get("ctx") or {}).items()}
    template = _WORDS.get(error["type"])
    if template is not None:
        with contextlib.suppress(KeyError):
            return template.format(**context)
    message = str(error["msg"]).replace("Input should be ", "expected ").replace("'", '"')
    message = message.split(" or instance of ")[0]
    return f"{message[:1].lower()}{message[1:]}"


def _cut(name: str) -> str:
    return name if len(name) <= SHOWN else f"{name[:SHOWN]}..."


def _where(item: str, loc: Sequence[int | str]) -> str:
    text = item
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model validating the object at `loc`, if one does."""
    current: type[BaseModel] | None = model
    for part in loc:
        field = current.model_fields.get(str(part)) if current is not None else None
        annotation = field.annotation if field is not None else None
        current = _model_in(annotation)
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found is not None:
            return found
    return None


def _expected(model: type[BaseModel], loc: Sequence[int | str]) -> Expected | None:
    """The `Expected` of the field at `loc` (or of the field holding it: a list's item, a
    mapping's value)."""
    current: type[BaseModel] | None = model
    found: Expected | None = None
    for part in loc:
        field = current.model_fields.get(str(part)) if current is not None else None
        if field is None:
            continue  # an item of the field before: its Expected speaks for it
        found = next((m for m in field.metadata if isinstance(m, Expected)), None)
        current = _model_in(field.annotation)
    return found
