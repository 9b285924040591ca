"""How a setting is declared once: pydantic models whose fields are the YAML keys (`Section`),
each with its type, default, bounds and help text (`setting(...)`), and the bridge that
reports what pydantic refuses as Problems with their key path and line (`validate`).

The declarations are in `config.schema*`, the kinds of value in `config.values`; the
README's configuration table is made from them (`config.settings_table`). pydantic validates
a section as a whole, so every problem in it is reported together; checks that compare
settings (or sections) with each other run afterwards, in `config.parse*`, over the values
that passed, with the same words (`config.fields`).

pydantic is imported by configuration parsing only (check-config, start-up, reloads in
their child process), never by the data plane's modules, which read `config.model`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from abgate.config.fields import Reader, kind_of, unknown_key
from abgate.config.values import ABGATE_ERROR, Names
from abgate.config.yaml_lines import KeyPath

T = TypeVar("T")


class Section(BaseModel):
    """A mapping of settings: unknown keys are errors, and a key with no value (`proxy:`
    alone) takes every default."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _nothing_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


def setting(default: Any, help: str, *, shown: str | None = None, key: str | None = None) -> Any:
    """One setting: its default as written in YAML (validated like a value a person wrote)
    and what it does, for the README's table. `shown` replaces the default there when the
    default is not a value (`required`, `the name`); `key`: the YAML key, when it cannot be
    the field's name (`json`)."""
    extra: dict[str, JsonValue] | None = {"shown": shown} if shown is not None else None
    return Field(
        default, description=help, validate_default=True, json_schema_extra=extra, alias=key
    )


def keys_of(section: type[BaseModel]) -> dict[str, FieldInfo]:
    """A section's settings by their YAML key."""
    return {field.alias or name: field for name, field in section.model_fields.items()}


def validate(
    reader: Reader,
    adapter: TypeAdapter[T],
    kind: Any,
    value: Any,
    path: KeyPath,
    names: Names | None = None,
    *,
    refused: set[str] | None = None,
) -> T | None:
    """`value` (at `path`) validated as `kind` (the type `adapter` was made for), or None
    with every problem in it reported to `reader`. `names`: what references may name.

    When unknown keys are all that is wrong, they are reported and the value without them
    is returned, so the checks across its settings still run and report with them (an
    unknown key changes no other setting; a refused value would, so it returns None).
    Given `refused`, a refused value's key is left at its default instead, and added to
    `refused`: the checks across settings that read none of those keys still run, and
    report in the same run."""
    try:
        return adapter.validate_python(value, context=names)
    except ValidationError as exc:
        for loc, message in _ordered(exc, kind):
            reader.problem((*path, *loc), message)
        errors = exc.errors()
    locs = [error["loc"] for error in errors if error["type"] != "extra_forbidden"]
    if locs and (refused is None or not isinstance(value, dict) or not all(locs)):
        return None  # the section itself refused, not only keys of it
    for error in errors:
        if error["type"] == "extra_forbidden":
            value = _without(value, error["loc"])
    keys = {str(loc[0]) for loc in locs}
    if refused is not None and keys:
        refused.update(keys)
        value = {key: item for key, item in value.items() if key not in keys}
    try:
        return adapter.validate_python(value, context=names)
    except ValidationError:  # a key that a shape validator moved: as refused
        return None


def _without(value: Any, loc: tuple[int | str, ...]) -> Any:
    """A copy of `value` without the key at `loc` (the same value when there is none)."""
    if not loc:
        return value
    head, rest = loc[0], loc[1:]
    if isinstance(value, dict) and head in value:
        if not rest:
            return {key: item for key, item in value.items() if key != head}
        return {**value, head: _without(value[head], rest)}
    if isinstance(value, list) and isinstance(head, int) and 0 <= head < len(value):
        return [*value[:head], _without(value[head], rest), *value[head + 1 :]]
    return value


def build(model: type[T], schema: BaseModel, **given: Any) -> T:
    """The frozen runtime value (`config.model`) from a validated section: each field of
    `model` from the setting of the same name, unless `given`."""
    assert dataclasses.is_dataclass(model)
    names = type(schema).model_fields
    values = {
        field.name: getattr(schema, field.name)
        for field in dataclasses.fields(model)
        if field.name not in given and field.name in names
    }
    return model(**values, **given)


def _ordered(exc: ValidationError, kind: Any) -> list[tuple[KeyPath, str]]:
    """pydantic's errors as (key path, message), an unknown key before the problems of the
    keys beside it (the order in which a person reads the section)."""
    out: list[tuple[KeyPath, str, bool]] = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if part != "[key]")
        unknown = error["type"] == "extra_forbidden"
        item = (loc, _message(error, kind), unknown)
        if unknown:
            parent = loc[:-1]
            at = next(
                (i for i, (p, _, u) in enumerate(out) if p[: len(parent)] == parent and not u),
                len(out),
            )
            out.insert(at, item)
        else:
            out.append(item)
    return [(loc, message) for loc, message, _ in out]


def _message(error: Any, kind: Any) -> str:
    kind_name = error["type"]
    if kind_name == ABGATE_ERROR:
        return str(error["msg"])
    if kind_name == "extra_forbidden":
        section = _section_at(kind, tuple(error["loc"][:-1]))
        own: str | None = getattr(section, "unknown_key", None)  # said in the section's words
        return own if own is not None else unknown_key(set(keys_of(section)))
    if kind_name in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {kind_of(error['input'])}"
    if kind_name in ("list_type", "tuple_type"):
        return f"expected a list, got {kind_of(error['input'])}"
    return str(error["msg"])


def _section_at(kind: Any, loc: tuple[Any, ...]) -> type[BaseModel]:
    """The section at `loc` inside a value of type `kind`."""
    for part in loc:
        kind = strip_annotations(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            kind = keys_of(kind)[part].annotation
        elif get_origin(kind) is dict:
            kind = get_args(kind)[1]
        elif get_origin(kind) in (list, tuple):
            kind = get_args(kind)[0]
    kind = strip_annotations(kind)
    assert isinstance(kind, type)
    assert issubclass(kind, BaseModel)
    return kind


def section_type(kind: Any) -> type[Section] | None:
    """The Section a field holds (`X`, `X | None`), or None when it holds a value."""
    inner = strip_annotations(kind)
    return inner if isinstance(inner, type) and issubclass(inner, Section) else None


def strip_annotations(kind: Any) -> Any:
    """`X | None` -> X, `Annotated[X, ...]` -> X."""
    while True:
        origin = get_origin(kind)
        if origin is typing.Annotated:
            kind = get_args(kind)[0]
        elif origin in (Union, types.UnionType):
            kind = next(arm for arm in get_args(kind) if arm is not type(None))
        else:
            return kind
