"""Real redis-servers on ephemeral ports that tests can kill and restart (empty): a plain one,
one with ACL users and TLS, a replica, and sentinels (`redis-server --sentinel`, what
Debian's redis-sentinel package runs) watching a primary."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.servers import free_port
from tests.tls_certs import Issued

ADMIN_PASSWORD = "admin-password-for-tests"


def redis_binary() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; `make test-servers` installs it")
        pytest.skip(
            "redis-server is not installed (run `make test-servers`); the Redis tests "
            "are skipped outside CI only"
        )
    return path


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The server's certificate and the CA it trusts for client certificates."""

    issued: Issued
    ca: Path


# What abgate needs, as the guide documents it: its keys and channel, no admin commands.
ABGATE_ACL = (
    "~{abgate}:*",
    "&{abgate}:*",
    "+@read",
    "+@write",
    "+@pubsub",
    "+@scripting",
    "+@transaction",
    "+@connection",
    "-@dangerous",
)


class RedisServer:
    """With `users` (name -> password), the default user is off and an `admin` user (all
    rights, ADMIN_PASSWORD) is what `client()` logs in as; the users have `acl` (all rights
    unless told); with `tls`, the only port speaks TLS; with `replica_of`, it replicates
    that server; `durable`, it keeps its data across a kill."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        tls: ServerTls | None = None,
        replica_of: RedisServer | None = None,
        name: str = "redis",
        acl: tuple[str, ...] = ("~*", "&*", "+@all"),
        durable: bool = False,
    ) -> None:
        self.acl = acl
        # durable: an append-only file synced at every write, so a restart after a kill
        # keeps every write Redis acknowledged (or applied) before it died.
        self.durable = durable
        self.binary = binary
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.users = users
        self.tls = tls
        self.replica_of = replica_of
        scheme = "rediss" if tls else "redis"
        self.url = f"{scheme}://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    def arguments(self) -> list[str]:
        args = [
            "--port",
            "0" if self.tls else str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.durable else "no",
            "--appendfsync",
            "always",
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
        ]
        if self.tls is not None:
            args += [
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls.issued.cert),
                "--tls-key-file",
                str(self.tls.issued.key),
                "--tls-ca-cert-file",
                str(self.tls.ca),
                "--tls-auth-clients",
                "optional",
                "--tls-replication",
                "yes",
            ]
        if self.users is not None:
            # One argument per ACL token: redis-server quotes an argument with spaces.
            args += ["--user", "default", "off"]
            args += ["--user", "admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all"]
            for user, password in self.users.items():
                args += ["--user", user, "on", f">{password}", *self.acl]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
            if self.replica_of.users is not None:
                args += ["--masteruser", "admin", "--masterauth", ADMIN_PASSWORD]
        return args

    async def start(self) -> None:
        """Start (again) on the same port: with nothing in it, or (durable) with what the
        append-only file holds."""
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            *self.arguments(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await _until_answering(self.client())

    async def kill(self) -> None:
        """SIGKILL: the way a crash looks to clients."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    def client(self) -> Redis:
        """An administrator's client (ACL admin when users are on)."""
        options: dict[str, object] = {"decode_responses": True}
        if self.users is not None:
            options.update(username="admin", password=ADMIN_PASSWORD)
        if self.tls is not None:
            # The name is not checked here: tests give servers certificates for other names.
            options.update(
                ssl_ca_certs=str(self.tls.ca), ssl_cert_reqs="required", ssl_check_hostname=False
            )
        return Redis.from_url(self.url, **options)  # type: ignore[arg-type]


async def _until_answering(client: Redis) -> None:
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    await client.ping()
                    return
                except (OSError, Exception):  # not accepting yet
                    await asyncio.sleep(0.02)
    finally:
        await client.aclose()


SERVICE = "abgate"


class SentinelServer:
    """One sentinel watching `primary` as service SERVICE: quorum 2 of 3, a primary that
    does not answer for `down_after` ms is down. It rewrites its own config file, as
    sentinels do."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        primary: RedisServer,
        *,
        index: int,
        down_after: int = 1000,
        password: str | None = None,
    ) -> None:
        self.binary = binary
        self.workdir = workdir / f"sentinel{index}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.tls = primary.tls  # a sentinel of TLS servers speaks TLS, to them and to clients
        lines = [f"port {self.port}"]
        if self.tls is not None:
            lines = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.issued.cert}",
                f"tls-key-file {self.tls.issued.key}",
                f"tls-ca-cert-file {self.tls.ca}",
                "tls-auth-clients optional",
                "tls-replication yes",
            ]
        lines += [
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {down_after}",
            f"sentinel failover-timeout {SERVICE} 10000",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        if primary.users is not None:
            lines += [
                f"sentinel auth-user {SERVICE} admin",
                f"sentinel auth-pass {SERVICE} {ADMIN_PASSWORD}",
            ]
        if password is not None:
            lines.append(f"requirepass {password}")
        self.config = self.workdir / "sentinel.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            str(self.config),
            "--sentinel",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await _until_answering(self.client())

    def client(self) -> Redis:
        options: dict[str, object] = {}
        if self.tls is not None:
            options.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca),
                ssl_cert_reqs="required",
                ssl_check_hostname=False,
            )
        return Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            decode_responses=True,
            **options,  # type: ignore[arg-type]
        )

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


@dataclass
class SentinelGroup:
    """A primary, its replica and three sentinels."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    async def primary_port(self) -> int:
        """The primary's port as the sentinels name it now."""
        client = self.sentinels[0].client()
        try:
            address = await client.sentinel_get_master_addr_by_name(SERVICE)
            return int(address[1])  # type: ignore[index]
        finally:
            await client.aclose()

    async def replicas_known(self) -> int:
        """How many replicas every sentinel has discovered (they learn them from INFO)."""
        counts = []
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                counts.append(len(await client.sentinel_slaves(SERVICE)))
            finally:
                await client.aclose()
        return min(counts)


@asynccontextmanager
async def redis_server(tmp_path: Path, **options: object) -> AsyncIterator[RedisServer]:
    server = RedisServer(redis_binary(), tmp_path, **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@asynccontextmanager
async def sentinel_group(
    tmp_path: Path,
    *,
    users: dict[str, str] | None = None,
    acl: tuple[str, ...] = ABGATE_ACL,
    sentinel_password: str | None = None,
    down_after: int = 1000,
    tls: ServerTls | None = None,
) -> AsyncIterator[SentinelGroup]:
    """A primary and a replica (replicating), watched by three sentinels that know both;
    the `users` have `acl` (by default what abgate needs and nothing more); with `tls`,
    every one of them speaks only TLS."""
    binary = redis_binary()
    primary = RedisServer(binary, tmp_path, users=users, name="primary", acl=acl, tls=tls)
    replica = RedisServer(
        binary, tmp_path, users=users, replica_of=primary, name="replica", acl=acl, tls=tls
    )
    sentinels = [
        SentinelServer(
            binary, tmp_path, primary, index=i, down_after=down_after, password=sentinel_password
        )
        for i in range(3)
    ]
    group = SentinelGroup(primary, replica, sentinels)
    try:
        await primary.start()
        await replica.start()
        await _replicating(replica)
        for sentinel in sentinels:
            await sentinel.start()
        async with asyncio.timeout(30):  # sentinels discover the replica and each other
            while await group.replicas_known() < 1:  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.1)
        yield group
    finally:
        for sentinel in sentinels:
            await sentinel.kill()
        await replica.kill()
        await primary.kill()


async def _replicating(replica: RedisServer) -> None:
    client = replica.client()
    try:
        async with asyncio.timeout(30):
            while (await client.info("replication")).get("master_link_status") != "up":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
