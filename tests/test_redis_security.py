"""Redis with an ACL user and a password, over TLS, on a real redis-server: a password read
from a file (rotated in place) or an environment variable, certificates the test makes, and
errors that say what is wrong (a refused password, a certificate not trusted) at start and
after a rotation, without ever showing the password."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession

from abgate.config import Config
from abgate.config.export import config_as_json
from abgate.control.log import RedactingFormatter
from abgate.control.serve import Embedded, Worker, embedded, worker
from abgate.state.redis_client import describe_redis_error
from abgate.state.redis_flag_sync import RedisFlagSync
from abgate.state.secrets import redact, remember
from tests.processes import abgate
from tests.redis_server import (
    ABGATE_ACL,
    SERVICE,
    RedisServer,
    ServerTls,
    redis_server,
    sentinel_group,
)
from tests.servers import make_config, tables_reach, until
from tests.tls_certs import CertificateAuthority

URL = "/api/agent/credit/decide"
FIRST, SECOND = "first-redis-password-1", "second-redis-password-2"


def secure_config(
    agents: dict[str, str],
    redis: RedisServer,
    ca: Path,
    tmp_path: Path,
    name: str,
    **redis_keys: Any,
) -> Config:
    return make_config(
        agents,
        flags={
            "redis": {
                "url": redis.url,
                "username": "abgate",
                "password_file": str(tmp_path / "redis-password"),
                "tls": {"ca_file": str(ca)},
                **redis_keys,
            },
            "state_file": str(tmp_path / f"{name}.json"),
            "heartbeat_interval": "200ms",
        },
    )


async def flag_write(session: ClientSession, running: Embedded, percentage: float) -> Any:
    async with session.post(
        f"{running.control_url}/api/flags/exp", json={"percentage": percentage}
    ) as response:
        return response.status, await response.json()


def all_syncs(control: Embedded, proxy: Worker) -> list[RedisFlagSync]:
    assert control.data.backend is not None
    syncs = [control.backend.sync, control.data.backend.sync, proxy.backend.sync]
    assert all(s is not None for s in syncs)
    return [s for s in syncs if s is not None]


async def connected_and_converging(
    session: ClientSession, control: Embedded, proxy: Worker, percentage: float
) -> None:
    """Every flag sync connected (again): the control process's, its data plane's and the
    proxy's; and a write reaches the proxy."""
    for sync in all_syncs(control, proxy):
        await asyncio.wait_for(sync.connected_event.wait(), 60)
    status, flag = await flag_write(session, control, percentage)
    assert status == 200
    await tables_reach([proxy.flags], "exp", flag["version"])


async def flag_store_reasons(session: ClientSession, running: Embedded) -> list[str]:
    async with session.get(f"{running.control_url}/health/aggregate") as response:
        body = await response.json()
    return list(body["components"]["flag_store"]["reasons"])


async def test_acl_user_over_tls_and_a_rotated_password(
    session: ClientSession,
    agents: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    tls = ServerTls(ca.issue("redis"), ca.pem)
    secret = tmp_path / "redis-password"
    secret.write_text(FIRST + "\n")  # as a Kubernetes Secret volume may hold it
    async with redis_server(tmp_path, users={"abgate": FIRST}, tls=tls, acl=ABGATE_ACL) as redis:
        assert redis.url.startswith("rediss://")
        config = secure_config(agents, redis, ca.pem, tmp_path, "control")
        async with (
            embedded(config) as control,
            worker(secure_config(agents, redis, ca.pem, tmp_path, "proxy")) as proxy,
        ):
            syncs = all_syncs(control, proxy)
            await connected_and_converging(session, control, proxy, 40)

            # The password changes on the server; connections are dropped (as a rotation
            # that kills old sessions does); the file still has the old one.
            admin = redis.client()
            try:
                await admin.acl_setuser(
                    "abgate", enabled=True, reset_passwords=True, passwords=[f"+{SECOND}"]
                )
                await admin.client_kill_filter(user="abgate")
            finally:
                await admin.aclose()
            await until(lambda: not any(s.connected for s in syncs))
            await until(lambda: all(s.last_error for s in syncs))
            expected = (
                f"Redis refused the credentials (user 'abgate', password from the file {secret})"
            )
            assert proxy.backend.sync is not None
            assert (proxy.backend.sync.last_error or "").startswith(expected)
            [reason] = await flag_store_reasons(session, control)
            assert reason.startswith(expected)
            assert "routing with the last known flags" in reason
            status, _body = await flag_write(session, control, 60)
            assert status == 503  # a write cannot be done, and says so
            async with session.get(f"{proxy.proxy_url}{URL}", headers={"X-User-Id": "u"}) as r:
                assert r.status == 200  # answers go on with the last flags

            # The file is rotated too: the next reconnect reads it, no restart.
            secret.write_text(SECOND)
            await connected_and_converging(session, control, proxy, 70)
            assert all(s.last_error is None for s in syncs)

            shown = str(config_as_json(config))  # what GET /api/config shows
            assert str(secret) in shown  # where the password is, not what it is
    records = [r for r in caplog.records if r.name == "abgate.flags"]
    refused = [r for r in records if "refused the credentials" in r.getMessage()]
    assert refused
    assert all(r.levelno == logging.ERROR for r in refused)  # a mistake waiting will not cure
    # Once per flag sync and cause, not once per retry: from the rotation on, each sync (the
    # control process's, its data plane's, the proxy's) says once that it is back, and says
    # "refused" again only after another cause came between (a busy machine may time out a
    # connect, before or during the outage).
    since = records[records.index(refused[0]) :]
    back = [r for r in since if "reachable again" in r.getMessage()]
    other = [r for r in since if "retrying" in r.getMessage() and r not in refused]
    assert len(back) == 3, [r.getMessage() for r in records]
    assert 3 <= len(refused) <= 3 + len(other), [r.getMessage() for r in records]
    logged = "\n".join(r.getMessage() for r in caplog.records) + shown
    assert FIRST not in logged
    assert SECOND not in logged


async def test_a_certificate_not_trusted_is_named_at_start_and_after_a_rotation(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    trusted = CertificateAuthority(tmp_path / "trusted")
    stranger = CertificateAuthority(tmp_path / "stranger", name="someone else's CA")
    (tmp_path / "redis-password").write_text(FIRST)
    server_tls = ServerTls(stranger.issue("redis"), stranger.pem)
    async with redis_server(tmp_path, users={"abgate": FIRST}, tls=server_tls) as redis:
        config = secure_config(agents, redis, trusted.pem, tmp_path, "control")
        async with embedded(config) as control:
            sync = control.backend.sync
            assert sync is not None
            await until(lambda: sync.last_error is not None)
            assert sync.last_error == (
                f"TLS to Redis failed: its certificate is not accepted (CA file {trusted.pem}): "
                "self-signed certificate in certificate chain"
            )
            # The server's certificate is replaced by one the client trusts: it connects.
            await redis.kill()
            redis.tls = ServerTls(trusted.issue("redis"), trusted.pem)
            await redis.start()
            await asyncio.wait_for(sync.connected_event.wait(), 60)
            assert sync.last_error is None
            # ...and rotated to one for another name: the host name check refuses it.
            await redis.kill()
            redis.tls = ServerTls(trusted.issue("elsewhere", ("db.example",)), trusted.pem)
            await redis.start()
            await until(lambda: (sync.last_error or "").startswith("TLS"))
            assert (sync.last_error or "").startswith(
                f"TLS to Redis failed: its certificate is not accepted (CA file {trusted.pem}): "
                "IP address mismatch"
            )


async def test_a_wrong_password_at_start_is_one_clear_line(
    session: ClientSession, agents: dict[str, str], tmp_path: Path
) -> None:
    """`abgate proxy` as a process, its password in an environment variable that is wrong:
    it serves (the last flags), says why Redis refuses it once, and never prints it."""
    async with redis_server(tmp_path, users={"abgate": FIRST}) as redis:
        path = tmp_path / "proxy.yaml"
        path.write_text(
            f"""
proxy: {{listen: "127.0.0.1:0", admin_listen: "127.0.0.1:0"}}
flags:
  redis: {{url: "{redis.url}", username: abgate, password_env: ABGATE_TEST_REDIS_PASSWORD}}
  state_file: null
  heartbeat_interval: 200ms
upstreams:
  control: {{url: "{agents["control"]}"}}
  treatment: {{url: "{agents["treatment"]}"}}
routes: [{{prefix: /, experiment: exp}}]
experiments:
  exp: {{control: control, treatment: treatment, percentage: 10}}
"""
        )
        env = {"ABGATE_TEST_REDIS_PASSWORD": SECOND}
        async with abgate("proxy", "--config", str(path), expect={"proxy": 1}, env=env) as proc:
            await until(lambda: "refused the credentials" in "".join(proc.output))
            async with session.get(proc.url("proxy") + URL) as answer:
                assert answer.status == 200  # it serves meanwhile
            await proc.stop()
    text = "".join(proc.output)
    assert (
        "ERROR abgate.flags: flag store: Redis refused the credentials (user 'abgate', "
        "password from the environment variable ABGATE_TEST_REDIS_PASSWORD): "
        "invalid username-password pair or user is disabled; routing" in text
    )
    assert text.count("refused the credentials") == 1
    assert SECOND not in text


def test_an_unset_password_variable_and_an_unreadable_file_are_named() -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from abgate.config.model import RedisSettings, SecretRef
    from abgate.state.redis_client import SecretCredentials

    provider = SecretCredentials("abgate", SecretRef(env="ABGATE_TEST_NOT_SET"))
    with pytest.raises(RedisConnectionError) as caught:
        provider.get_credentials()
    message = describe_redis_error(caught.value, RedisSettings(url="redis://x:1/0"))
    assert message == "no Redis password: environment variable ABGATE_TEST_NOT_SET is not set"
    provider = SecretCredentials(None, SecretRef(file="/nonexistent/redis-password"))
    with pytest.raises(RedisConnectionError) as caught:
        provider.get_credentials()
    assert str(caught.value) == (
        "no Redis password: cannot read the file /nonexistent/redis-password: "
        "No such file or directory"
    )


def test_logs_never_show_a_secret_or_a_url_password() -> None:
    remember("s3cret-value")
    record = logging.LogRecord(
        "abgate", logging.ERROR, __file__, 1, "auth with %s failed for %s", None, None
    )
    record.args = ("s3cret-value", "postgresql://abgate:other-pass@db:5432/x")
    line = RedactingFormatter("%(message)s").format(record)
    assert line == "auth with *** failed for postgresql://abgate:***@db:5432/x"
    assert redact("nothing secret here") == "nothing secret here"


async def test_sentinels_and_servers_all_over_tls(
    session: ClientSession,
    agents: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sentinel with TLS everywhere: the sentinels are asked over TLS, the primary they name
    is reached over TLS, as the ACL user."""
    ca = CertificateAuthority(tmp_path / "ca")
    monkeypatch.setenv("ABGATE_TEST_REDIS_PASSWORD", FIRST)
    tls = ServerTls(ca.issue("redis"), ca.pem)
    async with sentinel_group(tmp_path, users={"abgate": FIRST}, tls=tls) as group:
        config = make_config(
            agents,
            flags={
                "redis": {
                    "sentinel": {"addresses": group.addresses, "service": SERVICE},
                    "username": "abgate",
                    "password_env": "ABGATE_TEST_REDIS_PASSWORD",
                    "tls": {"ca_file": str(ca.pem)},
                },
                "heartbeat_interval": "200ms",
            },
        )
        redis = config.flags.redis
        assert redis is not None
        assert redis.sentinel is not None
        assert redis.sentinel.tls  # as the servers, unless told otherwise
        async with embedded(config) as running:
            sync = running.backend.sync
            assert sync is not None
            await asyncio.wait_for(sync.connected_event.wait(), 60)
            status, flag = await flag_write(session, running, 30)
            assert status == 200
            assert flag["percentage"] == 30
        admin = group.primary.client()
        try:
            stored = await admin.hget("{abgate}:flags", "exp")
        finally:
            await admin.aclose()
        assert stored is not None  # on the primary the sentinels named
        assert orjson.loads(stored)["basis_points"] == 3000
