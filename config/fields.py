"""Typed checks for configuration values, and the Reader that reports what they refuse.

Each `check_*` returns the value it accepts or raises `Invalid` with the message a person
reads (`must be between 1 and 100000, got 0`); the pydantic schema (`config.settings`) and
the checks across settings (`config.parse*`) call them, so a value is judged the same way,
in the same words, wherever it is written.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import orjson

from abgate.config.durations import read_seconds
from abgate.config.errors import AbgateError, Problem
from abgate.config.model import BASIS_POINTS, Listen
from abgate.config.yaml_lines import KeyPath, LocatedDocument, render_path

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
NAME_WHAT = "a name (letters, digits, '_', '.', '-'; up to 128)"
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (header names)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

T = TypeVar("T")


class Invalid(AbgateError, ValueError):
    """A value refused; its text is the whole message (the key path and line are added by
    whoever reports it)."""


def check_string(
    value: Any, *, pattern: re.Pattern[str] | None = None, what: str = "a string"
) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"expected {what}, got {kind_of(value)}")
    if pattern is not None and not pattern.match(value):
        raise Invalid(f"not {what}: {shown(value)}")
    return value


def check_name(value: Any) -> str:
    return check_string(value, pattern=NAME, what=NAME_WHAT)


def check_header_name(value: Any) -> str:
    return check_string(value, pattern=_TOKEN, what="a header name")


def check_env_name(value: Any) -> str:
    return check_string(value, pattern=_ENV_NAME, what="an environment variable")


def check_file_path(value: Any) -> str:
    return check_string(value, what="a file path")


def check_integer(value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {kind_of(value)}")
    if not low <= value <= high:
        raise Invalid(f"must be between {low} and {high}, got {value}")
    return value


def check_boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {kind_of(value)}")
    return value


def check_size(value: Any, *, low: int = 0) -> int:
    """Bytes: an integer or a string such as `64KiB`, `10MiB`, `1GB`."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = _SIZE_UNITS.get(match.group(2).lower())
        if unit is not None:
            number = int(match.group(1)) * unit
    if number is None:
        raise Invalid(f"expected a size such as 65536, '64KiB' or '10MiB', got {shown(value)}")
    if number < low:
        raise Invalid(f"must be at least {low} bytes, got {number}")
    return number


def check_duration(value: Any, *, low: float = 0.0, high: float = 86_400.0) -> float:
    """Seconds: a number or a string such as `250ms`, `5s`, `2m`."""
    seconds = read_seconds(value)
    if seconds is None:
        raise Invalid(f"expected a duration such as 1.5, '250ms' or '5s', got {shown(value)}")
    if not low < seconds <= high:
        raise Invalid(f"must be more than {low:g}s and at most {high:g}s, got {seconds:g}s")
    return seconds


def check_listen(value: Any) -> Listen:
    """`host:port` (IPv6 as `[::1]:port`); port 0 asks the OS for a free port."""
    if not isinstance(value, str):
        raise Invalid(f"expected 'host:port', got {kind_of(value)}")
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise Invalid(f"expected 'host:port' with a port of 0..65535, got {shown(value)}")
    if not _valid_host(host):
        raise Invalid(f"not a valid host: {shown(host)}")
    return Listen(host, int(port_text))


class Reader:
    """Collects every problem found in a located document, each with its key path and line,
    instead of stopping at the first (pydantic's, through `config.settings.validate`, and
    those of the checks across settings)."""

    def __init__(self, doc: LocatedDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = list(doc.problems)  # the YAML's own first
        self._refused = {problem.path for problem in doc.problems}

    def problem(self, path: KeyPath, message: str) -> None:
        where = render_path(path)
        if where in self._refused:  # a value the YAML refused is reported once, as that
            return
        line, file = self.doc.line_of(path), self.doc.file_of(path)
        self.problems.append(Problem(where, line, message, file))

    def checked(
        self, path: KeyPath, check: Callable[..., T], value: Any, **bounds: Any
    ) -> T | None:
        """`check(value, **bounds)`, or None with its refusal reported at `path`."""
        try:
            return check(value, **bounds)
        except Invalid as exc:
            self.problem(path, str(exc))
            return None

    def mapping(self, value: Any, path: KeyPath, allowed: set[str]) -> dict[str, Any] | None:
        """A mapping whose keys must all be in `allowed`; unknown keys are problems."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, got {kind_of(value)}")
            return None
        for key in value:
            if key not in allowed:
                self.problem((*path, key), unknown_key(allowed))
        return value


def unknown_key(allowed: set[str]) -> str:
    return f"unknown key (expected one of: {', '.join(sorted(allowed))})"


def parse_percentage(value: Any, report: Any) -> int | None:
    """Shared by the config and the control API: a number 0..100, two decimals at most."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        report(f"expected a number from 0 to 100, got {kind_of(value)}")
        return None
    try:
        exact = Decimal(str(value))
    except InvalidOperation:
        report(f"expected a number from 0 to 100, got {shown(value)}")
        return None
    if not exact.is_finite() or not Decimal(0) <= exact <= Decimal(100):
        report(f"must be between 0 and 100, got {value}")
        return None
    basis_points = exact * 100
    if basis_points != basis_points.to_integral_value():
        report(f"at most two decimals (0.01% steps), got {value}")
        return None
    result = int(basis_points)
    assert 0 <= result <= BASIS_POINTS
    return result


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host) is not None


SHOWN = 80  # characters of a refused value a message echoes: a request body may be a megabyte


def kind_of(value: Any) -> str:
    """What a value is, for a message: `a string ("ten")`, `a boolean (true)`, `nothing`;
    a string as JSON writes it, cut at SHOWN characters."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        cut = "..." if len(value) > SHOWN else ""
        return f"a string ({json.dumps(value[:SHOWN], ensure_ascii=False)}{cut})"
    return f"{type(value).__name__} ({value})"


def shown(value: object) -> str:
    """A refused value as an error names it: as JSON writes it (not Python's repr: "yes",
    true, null), a number as it was read (a whole number without Python's `.0`), cut at SHOWN
    characters with the length said."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        text = str(int(value))  # 2 as the client wrote it: a float field holds it as 2.0
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        text = str(value) if isinstance(value, Decimal) else repr(value)
    else:
        try:
            text = orjson.dumps(value, default=str).decode()
        except TypeError:  # a string that is not valid Unicode
            text = json.dumps(value, default=str)
    if len(text) <= SHOWN:
        return text
    if isinstance(value, str):  # cut inside its quotes, so that it still reads as a string
        cut = orjson.dumps(value[: SHOWN - 1], default=str).decode()
        return f'{cut[:-1]}..." ({len(value):,} characters)'
    return f"{text[:SHOWN]}... ({len(text):,} characters)"
