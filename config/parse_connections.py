"""Configuration: `flags` and how abgate reaches Redis, from their declarations in
`config.schema_connections`, with the checks of which keys go together (made on the keys
given, so they are reported with the values' own problems)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from abgate.config.defaults import REDIS_WAIT_REPLICAS, REDIS_WAIT_REPLICAS_SENTINEL
from abgate.config.fields import Reader
from abgate.config.model import FlagsSettings, RedisSettings, SentinelSettings, TlsSettings
from abgate.config.schema_connections import (
    FLAGS,
    REDIS,
    FlagsSection,
    RedisSection,
    SentinelSection,
)
from abgate.config.settings import build, validate
from abgate.config.yaml_lines import KeyPath


def _url_password(url: str) -> bool:
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def _given(value: Any) -> dict[str, Any]:
    """The keys given a value (with a value), whatever the values are."""
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if item is not None}


def check_one_password(r: Reader, value: Any, path: KeyPath) -> bool:
    """`password_env` or `password_file`, not both."""
    given = _given(value)
    if "password_env" in given and "password_file" in given:
        r.problem(path, "password_env and password_file: give one of them")
        return False
    return True


class ConnectionSchema:
    r: Reader

    def _flags(self, value: Any) -> FlagsSettings | None:
        path: KeyPath = ("flags",)
        section = validate(self.r, FLAGS, FlagsSection, value, path)
        given = _given(value)
        ok = self._redis_keys(given.get("redis"), (*path, "redis"))
        if "redis_url" in given and "redis" in given:
            self.r.problem(path, "redis_url and redis: give one of them")
            ok = False
        if section is None or not ok:
            return None
        redis = section.redis
        if section.redis_url is not None:  # the short form of redis: {url: ...}
            redis = REDIS.validate_python({"url": section.redis_url})
        return build(FlagsSettings, section, redis=_redis(redis, given) if redis else None)

    def _redis_keys(self, value: Any, path: KeyPath) -> bool:
        """Which keys of `flags.redis` go together."""
        given = _given(value)
        if not given:
            return True
        before = len(self.r.problems)
        url = given.get("url")
        if ("url" in given) == ("sentinel" in given):
            self.r.problem(path, "needs exactly one of url (one server) or sentinel")
        if "db" in given and "url" in given:
            self.r.problem((*path, "db"), "with url, the database is the URL's path (/0)")
        if check_one_password(self.r, given, path) and isinstance(url, str):
            secret = "password_env" in given or "password_file" in given
            if secret and _url_password(url):
                self.r.problem(path, "the URL holds a password already: give it in one place")
        if "tls" in given and isinstance(url, str) and not url.startswith("rediss://"):
            self.r.problem((*path, "tls"), "TLS needs a rediss:// URL")
        tls = _given(given.get("tls"))
        if ("cert_file" in tls) != ("key_file" in tls):
            self.r.problem(
                (*path, "tls"), "cert_file and key_file go together (a client certificate)"
            )
        check_one_password(self.r, given.get("sentinel"), (*path, "sentinel"))
        return len(self.r.problems) == before


def _redis(section: RedisSection, given: dict[str, Any]) -> RedisSettings:
    sentinel = section.sentinel
    # Sentinels of a TLS deployment speak TLS too, unless told otherwise.
    sentinel_tls = "tls" in _given(_given(given.get("redis")).get("sentinel"))
    return build(
        RedisSettings,
        section,
        sentinel=_sentinel(sentinel, section.tls is not None and not sentinel_tls)
        if sentinel is not None
        else None,
        password=section.password,
        tls=build(TlsSettings, section.tls) if section.tls is not None else None,
        wait_replicas=section.wait_replicas
        if section.wait_replicas is not None
        else (REDIS_WAIT_REPLICAS_SENTINEL if sentinel is not None else REDIS_WAIT_REPLICAS),
    )


def _sentinel(section: SentinelSection, tls_by_default: bool) -> SentinelSettings:
    return build(
        SentinelSettings, section, password=section.password, tls=section.tls or tls_by_default
    )
