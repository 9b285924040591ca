"""The one place abgate's Redis client is made, from `flags.redis` (or ABGATE_REDIS_URL).

One server (a URL) or the primary that Sentinel names; an ACL user and a password read when
each connection is made (state/secrets.py); TLS with the CA, client certificate and host
name check of `flags.redis.tls`. Flag sync and writes, measurement flushes, the instance
registry, the rollout state and the controller lease all use the client made here, so they
all follow a Sentinel failover the same way: redis-py's SentinelConnectionPool asks the
sentinels for the primary whenever it opens a connection, a connection to a primary that
was demoted is closed at its first READONLY answer, and a dead one fails its command (the
caller's retry or StoreUnavailable). Pub/sub re-subscribes because the sync task opens a new
subscription after any connection error (state/redis_flags.py).

Errors are described for people here too (`describe_redis_error`): a refused password, a
certificate not trusted and a Sentinel that knows no primary are each named as such, with
where the password comes from, never the password.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from abgate.config import Config
from abgate.config.errors import AbgateError
from abgate.config.model import RedisSettings, SecretRef
from abgate.state.redis_timing import TimedRedis
from abgate.state.secrets import SecretUnavailable, read_secret, redact, remember

# Lost writes would be worse than slow ones: a command that cannot reach Redis fails fast
# (503 to the caller) instead of hanging on retries.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0


def redis_settings(config: Config) -> RedisSettings | None:
    """`flags.redis`, else ABGATE_REDIS_URL, else None (the embedded store)."""
    if config.flags.redis is not None:
        return config.flags.redis
    url = os.environ.get("ABGATE_REDIS_URL")
    return RedisSettings(url=url) if url else None


class CredentialsUnavailable(AuthenticationError, AbgateError):
    """The password could not be read (an unset variable, a missing file)."""


class SecretCredentials(CredentialProvider):
    """An ACL user and a password read at every new connection (so a rotated file is used
    at the next reconnect)."""

    def __init__(self, username: str | None, password: SecretRef) -> None:
        self.username = username
        self.password = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            secret = read_secret(self.password)
        except SecretUnavailable as exc:
            raise CredentialsUnavailable(f"no Redis password: {exc}") from None
        return (self.username, secret) if self.username else (secret,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


@dataclass(frozen=True, slots=True)
class RedisConnection:
    """The client every component shares, and what must be closed with it."""

    client: Redis
    settings: RedisSettings
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()

    def describe(self, exc: BaseException) -> str:
        return describe_redis_error(exc, self.settings)


def _credentials(username: str | None, password: SecretRef | None) -> dict[str, Any]:
    if password is not None:
        return {"credential_provider": SecretCredentials(username, password)}
    return {"username": username} if username else {}


def _tls(settings: RedisSettings) -> dict[str, Any]:
    tls = settings.tls
    if not settings.uses_tls:
        return {}
    if tls is None:  # rediss:// alone: the system's CAs, host name checked
        return {"ssl_cert_reqs": "required"}
    return {
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": tls.ca_file,
        "ssl_certfile": tls.cert_file,
        "ssl_keyfile": tls.key_file,
        "ssl_check_hostname": tls.check_hostname,
    }


def connect_redis(settings: RedisSettings) -> RedisConnection:
    """A client whose every command is timed (state/redis_timing.py). Nothing is sent yet:
    connections open on first use, so a Redis that is away at start costs nothing here."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "retry": Retry(NoBackoff(), 0),
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "health_check_interval": 0,
        **_credentials(settings.username, settings.password),
        **_tls(settings),
    }
    if settings.url is not None:
        password = urlsplit(settings.url).password
        if password:
            remember(unquote(password))
        return RedisConnection(TimedRedis.from_url(settings.url, **common), settings)
    sentinel_settings = settings.sentinel
    assert sentinel_settings is not None  # the config holds exactly one of the two
    watcher: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        **_credentials(sentinel_settings.username, sentinel_settings.password),
    }
    if sentinel_settings.tls:
        watcher.update({"ssl": True, **_tls(settings)})
    sentinel = Sentinel(list(sentinel_settings.addresses), sentinel_kwargs=watcher)
    client = sentinel.master_for(
        sentinel_settings.service,
        redis_class=TimedRedis,
        db=settings.db,
        ssl=settings.uses_tls,
        **common,
    )
    return RedisConnection(client, settings, sentinel)


def connect(url: str) -> Redis:
    """The client of one URL and nothing else (tools, tests): closing it closes it all."""
    return connect_redis(RedisSettings(url=url)).client


def describe_redis_error(exc: BaseException, settings: RedisSettings | None = None) -> str:
    """What went wrong, in words an operator can act on; never a secret."""
    user = f"user {settings.username!r}" if settings and settings.username else "the default user"
    source = (
        f"password from the {settings.password}"
        if settings and settings.password
        else "password from the URL"
        if settings and settings.url and urlsplit(settings.url).password
        else "no password"
    )
    text = redact(str(exc)).rstrip(".")
    if isinstance(exc, CredentialsUnavailable):
        return text
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"Redis refused the credentials ({user}, {source}): {text}"
    if isinstance(exc, NoPermissionError):
        return f"Redis {user} lacks an ACL permission abgate needs: {text}"
    if isinstance(exc, MasterNotFoundError):
        service = settings.sentinel.service if settings and settings.sentinel else "?"
        return f"no sentinel names a primary for {service!r} (failover under way?): {text}"
    cause = _tls_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        ca = settings.tls.ca_file if settings and settings.tls and settings.tls.ca_file else None
        trusted = f"CA file {ca}" if ca else "the system's CAs"
        return (
            f"TLS to Redis failed: its certificate is not accepted ({trusted}): "
            f"{(cause.verify_message or cause.reason or '').rstrip('.')}"
        )
    if cause is not None:
        return f"TLS to Redis failed: {redact(str(cause))}"
    if isinstance(exc, ResponseError):
        return f"Redis answered an error: {text}"
    return f"Redis unreachable: {text}"


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(5):  # the chain redis-py builds is short
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_config_mistake(exc: BaseException) -> bool:
    """Errors that waiting will not cure (a password, a certificate): logged as errors."""
    return isinstance(exc, AuthenticationError | NoPermissionError) or _tls_cause(exc) is not None
