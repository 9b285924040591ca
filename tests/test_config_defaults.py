"""Every default `config.model` declares is the one the schema gives a file that leaves the
setting out: both read `config.defaults`, and a value written in one place only (or a rule
such as Sentinel's replicas) fails here."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from abgate.config import model, parse_config
from abgate.config.defaults import REDIS_WAIT_REPLICAS_SENTINEL
from abgate.config.model import (
    Config,
    ExperimentConfig,
    HistorySettings,
    MetricConfig,
    RedisSettings,
    SentinelSettings,
    SloConfig,
    TlsSettings,
)

BASE = """\
upstreams:
  a: {url: "http://127.0.0.1:9001"}
  b: {url: "http://127.0.0.1:9002"}
routes: [{prefix: /, experiment: e}]
experiments:
  e:
    control: a
    treatment: b
    percentage: 10
"""


def _with(extra: str) -> Config:
    return parse_config(BASE + extra)


def _redis(config: Config) -> RedisSettings | None:
    return config.flags.redis


# Each dataclass of config.model with a default: a file that leaves its settings out, the
# value the parser makes from it, and the value made in code from the model's defaults.
CASES: dict[type, tuple[str, Callable[[Config], Any], Any]] = {
    Config: ("", lambda c: c.history, Config.__dataclass_fields__["history"].default),
    HistorySettings: ("history: {}\n", lambda c: c.history, HistorySettings()),
    RedisSettings: (
        "flags: {redis: {url: 'redis://h:1/0'}}\n",
        _redis,
        RedisSettings(url="redis://h:1/0"),
    ),
    SentinelSettings: (
        "flags: {redis: {sentinel: {addresses: ['h:26379'], service: m}}}\n",
        _redis,
        RedisSettings(
            sentinel=SentinelSettings((("h", 26379),), "m"),
            wait_replicas=REDIS_WAIT_REPLICAS_SENTINEL,  # the one default with a rule
        ),
    ),
    TlsSettings: (
        "flags: {redis: {url: 'rediss://h:1/0', tls: {}}}\n",
        lambda c: _redis(c) and _redis(c).tls,  # type: ignore[union-attr]
        TlsSettings(),
    ),
    MetricConfig: (
        "    metrics: {m: {type: binary, direction: higher}}\n",
        lambda c: c.experiments["e"].metrics[0],
        MetricConfig("m", "binary", "higher"),
    ),
    SloConfig: (
        "    rollout: {}\n",
        lambda c: c.experiments["e"].rollout and c.experiments["e"].rollout.slo,
        SloConfig(),
    ),
    ExperimentConfig: ("", lambda c: c.experiments["e"].rollout, None),
}

# Defaulted, but no setting: made from `password_env` or `password_file`.
NOT_SETTINGS = {model.SecretRef}


@pytest.mark.parametrize("kind", list(CASES), ids=lambda kind: kind.__name__)
def test_the_model_defaults_what_the_schema_defaults(kind: type) -> None:
    extra, made, expected = CASES[kind]
    assert made(_with(extra)) == expected


def test_every_default_of_the_model_is_checked() -> None:
    defaulted = {
        kind
        for _, kind in inspect.getmembers(model, inspect.isclass)
        if dataclasses.is_dataclass(kind)
        and kind.__module__ == model.__name__
        and any(
            field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
            for field in dataclasses.fields(kind)
        )
    }
    assert defaulted == set(CASES) | NOT_SETTINGS


def test_a_default_changed_in_one_place_is_caught() -> None:
    """The check above can fail: a model default that is not the schema's differs."""
    extra, made, _ = CASES[HistorySettings]
    assert made(_with(extra)) != HistorySettings(buffer=1000)
