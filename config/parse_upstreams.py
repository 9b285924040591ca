"""Configuration: upstreams, with their breaker and active health check, from their
declarations in `config.schema_upstreams`."""

from __future__ import annotations

from typing import Any

from abgate.config.fields import Reader
from abgate.config.model import BreakerConfig, HealthCheckConfig, UpstreamConfig
from abgate.config.schema_upstreams import UPSTREAMS, UpstreamSection, UpstreamSections
from abgate.config.settings import build, validate


class UpstreamSchema:
    r: Reader

    def _upstreams(self, value: Any) -> dict[str, UpstreamConfig] | None:
        sections = validate(self.r, UPSTREAMS, UpstreamSections, value, ("upstreams",))
        if sections is None:
            return None
        return {name: _upstream(name, section) for name, section in sections.items()}


def _upstream(name: str, section: UpstreamSection) -> UpstreamConfig:
    breaker = section.breaker
    check = section.health_check
    return build(
        UpstreamConfig,
        section,
        name=name,
        url=section.url.url,
        host=section.url.host,
        port=section.url.port,
        breaker=build(
            BreakerConfig,
            breaker,
            max_open_duration=max(breaker.max_open_duration, breaker.open_duration),
        ),
        health_check=build(HealthCheckConfig, check) if check is not None else None,
    )
