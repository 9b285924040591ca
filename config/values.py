"""The kinds of value a setting may hold, as pydantic validators over `config.fields`' checks:
`duration(high=3600)` (`10s`), `size(low=1024)` (`64KiB`), `integer`, `number`, `LISTEN`
(`host:port`), `NAME`, and `reference` (an upstream, experiment or metric the same file
declares). A refusal is raised in our own words (`refuse`), at the key it concerns, so
`config.settings.validate` reports it as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic import BeforeValidator, PlainValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from abgate.config.fields import (
    Invalid,
    check_boolean,
    check_duration,
    check_env_name,
    check_file_path,
    check_integer,
    check_listen,
    check_name,
    check_size,
    shown,
)

ABGATE_ERROR = "abgate"  # the error type of a refusal in our own words


def refuse(message: str) -> PydanticCustomError:
    """A refusal pydantic reports where it happened, worded as ours."""
    return PydanticCustomError(ABGATE_ERROR, "{message}", {"message": message})


def checked(check: Callable[..., Any], *, optional: bool = False, **bounds: Any) -> PlainValidator:
    """A `config.fields` check as a pydantic validator: `Annotated[int, checked(check_size,
    low=1024)]`; `optional`: null is a value (none)."""
    return PlainValidator(_refusing(check, optional, bounds))


def before(check: Callable[[Any], Any]) -> BeforeValidator:
    """A check that runs before pydantic's own (a mapping's shape, said in our words)."""
    return BeforeValidator(_refusing(check, False, {}))


def _refusing(
    check: Callable[..., Any], optional: bool, bounds: dict[str, Any]
) -> Callable[[Any], Any]:
    def validate(value: Any) -> Any:
        if optional and value is None:
            return None
        try:
            return check(value, **bounds)
        except Invalid as exc:
            raise refuse(str(exc)) from None

    return validate


def duration(*, low: float = 0.0, high: float = 86_400.0, optional: bool = False) -> PlainValidator:
    """Seconds, written as a number or `250ms`, `5s`, `2m`, `1h`, `90d`."""
    return checked(check_duration, optional=optional, low=low, high=high)


def size(*, low: int = 0) -> PlainValidator:
    """Bytes, written as a number or `64KiB`, `10MiB`, `1GB`."""
    return checked(check_size, low=low)


def integer(*, low: int, high: int, optional: bool = False) -> PlainValidator:
    return checked(check_integer, optional=optional, low=low, high=high)


def number(*, low: float, high: float, message: str, low_open: bool = False) -> PlainValidator:
    """A real number in [low, high] (or (low, high] with `low_open`); `message` says what
    was expected, followed by the value refused."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"{message}, got {shown(value)}")
        if not (low < value if low_open else low <= value) or not value <= high:
            raise Invalid(f"{message}, got {shown(value)}")
        return float(value)

    return checked(check)


@dataclasses.dataclass(frozen=True, slots=True)
class Names:
    """The upstreams and experiments a file declares: a reference is checked against these
    (so one bad upstream is reported once, not again by everything that refers to it)."""

    upstreams: frozenset[str] = frozenset()
    experiments: frozenset[str] = frozenset()
    metrics: frozenset[str] = frozenset()  # in a rollout plan: its experiment's


def reference(kind: str) -> PlainValidator:
    """The name of an upstream or an experiment declared in the same file, or nothing."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        names = info.context
        assert isinstance(names, Names)
        known = names.upstreams if kind == "upstream" else names.experiments
        if value is not None and (not isinstance(value, str) or value not in known):
            raise refuse(f"unknown {kind} {shown(value)}")
        return value

    return PlainValidator(validate)


BOOLEAN = checked(check_boolean)
LISTEN = checked(check_listen)
NAME = checked(check_name)
ENV_NAME = checked(check_env_name, optional=True)
FILE_PATH = checked(check_file_path, optional=True)
