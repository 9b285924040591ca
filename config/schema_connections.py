"""The settings of `flags`: where the flag state lives, and how abgate reaches Redis (one
URL or Sentinel, an ACL user, a password, TLS), each declared once (see `config.settings`).
Secrets are references to an environment variable or a file, never values in the YAML (a
URL may still carry one: it is masked wherever shown). Which keys go together is checked
with the section, in `config.parse_connections`."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import TypeAdapter

from abgate.config.defaults import (
    REDIS_DB,
    REDIS_WAIT_REPLICAS,
    REDIS_WAIT_REPLICAS_SENTINEL,
    REDIS_WAIT_TIMEOUT,
    SENTINEL_TLS,
    TLS_CHECK_HOSTNAME,
)
from abgate.config.export import mask_url
from abgate.config.fields import Invalid, check_listen, check_string, shown
from abgate.config.model import SecretRef
from abgate.config.settings import Section, setting
from abgate.config.values import (
    BOOLEAN,
    ENV_NAME,
    FILE_PATH,
    NAME,
    before,
    checked,
    duration,
    integer,
)

_USER = re.compile(r"^[^\s]{1,128}$")
_SCHEMES = ("redis://", "rediss://", "unix://")


def _redis_url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(_SCHEMES):
        masked = mask_url(value) if isinstance(value, str) else value
        raise Invalid(f"expected a redis:// URL, got {shown(masked)}")
    return value


def _user(value: Any) -> str:
    return check_string(value, pattern=_USER, what="an ACL user name")


def _addresses(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise Invalid("expected a list of 'host:port' sentinels")
    return value


def _sentinel(value: Any) -> tuple[str, int]:
    listen = check_listen(value)
    if listen.port == 0:
        raise Invalid("a sentinel needs a port")
    return listen.host, listen.port


def _state_file(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise Invalid("expected a file path, or null for none")
    return value


RedisUrl = Annotated[str | None, checked(_redis_url, optional=True)]
UserName = Annotated[str | None, checked(_user, optional=True)]


class Secret(Section):
    """A password read at every new connection (so a rotated file is picked up): from an
    environment variable or a file, one of them."""

    password_env: Annotated[str | None, ENV_NAME] = setting(
        None,
        "the password, read at every new connection from this environment variable; never "
        "in the YAML, never shown",
    )
    password_file: Annotated[str | None, FILE_PATH] = setting(
        None, "or from this file (a rotated file is used at the next reconnect)"
    )

    @property
    def password(self) -> SecretRef | None:
        if self.password_env is not None:
            return SecretRef(env=self.password_env)
        if self.password_file is not None:
            return SecretRef(file=self.password_file)
        return None


class TlsSection(Section):
    ca_file: Annotated[str | None, FILE_PATH] = setting(
        None, "the CA that signed the server's certificate; none: the system's CAs"
    )
    cert_file: Annotated[str | None, FILE_PATH] = setting(
        None, "a client certificate (mutual TLS), with `key_file`"
    )
    key_file: Annotated[str | None, FILE_PATH] = setting(None, "its private key")
    check_hostname: Annotated[bool, BOOLEAN] = setting(
        TLS_CHECK_HOSTNAME, "the server's name must match its certificate"
    )


class SentinelSection(Secret):
    addresses: Annotated[
        tuple[Annotated[tuple[str, int], checked(_sentinel)], ...], before(_addresses)
    ] = setting(None, '`["host:26379", ...]`: the sentinels to ask', shown="required")
    service: Annotated[str, NAME] = setting(
        None,
        "the master name they watch: its primary is followed across failovers",
        shown="required",
    )
    username: UserName = setting(None, "the sentinels' own ACL user")
    tls: Annotated[bool, BOOLEAN] = setting(
        SENTINEL_TLS, "the sentinels speak TLS (with `redis.tls`, true unless set)"
    )


class RedisSection(Secret):
    url: RedisUrl = setting(
        None, "one server: `redis://`, `rediss://` for TLS, `unix://` (or `sentinel`)"
    )
    sentinel: SentinelSection | None = setting(
        None, "or the primary the sentinels name (exactly one of `url` and `sentinel`)"
    )
    db: Annotated[int, integer(low=0, high=15)] = setting(
        REDIS_DB, "the database, with `sentinel` (a URL names its own)"
    )
    username: UserName = setting(None, "the ACL user")
    tls: TlsSection | None = setting(
        None, "TLS (a `rediss://` URL alone: the system's CAs)", shown="none"
    )
    wait_replicas: Annotated[int | None, integer(low=0, high=16, optional=True)] = setting(
        None,
        "a flag write answers once this many replicas have it (`WAIT`), so a failover keeps it",
        shown=f"`{REDIS_WAIT_REPLICAS_SENTINEL}` with sentinel, else `{REDIS_WAIT_REPLICAS}`",
    )
    wait_timeout: Annotated[float, duration(high=60)] = setting(
        REDIS_WAIT_TIMEOUT,
        "short of the replicas after this, the write stands, logged and counted",
    )


class FlagsSection(Section):
    redis_url: RedisUrl = setting(
        None,
        "`redis://...`: flags live in Redis, shared by every sidecar (`ABGATE_REDIS_URL` when "
        "neither this nor `flags.redis` is set); the short form of `flags.redis: {url: ...}`",
    )
    redis: RedisSection | None = setting(
        None, "Redis with Sentinel, an ACL user, a password or TLS"
    )
    key_prefix: Annotated[str, NAME] = setting(
        "abgate", "Redis keys are `{abgate}:...` (one Cluster slot)"
    )
    state_file: Annotated[str | None, checked(_state_file)] = setting(
        ".abgate/flags.json",
        "local snapshot (relative to the working directory): the embedded store's flags, "
        "their history, and the measurement phases and sums; with Redis, the control plane's "
        "durable copy and a proxy's last known state; `null` for none",
    )
    heartbeat_interval: Annotated[float, duration(high=60)] = setting(
        "1s", "how often a proxy reports its applied flag versions"
    )


FLAGS = TypeAdapter(FlagsSection)
REDIS = TypeAdapter(RedisSection)
