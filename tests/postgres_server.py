"""A real PostgreSQL for the tests: initdb and pg_ctl in a temporary directory, on an
ephemeral port on 127.0.0.1, trust authentication (or, with a password, scram-sha-256 over
TCP, and with a certificate, TLS); stopped (or killed) by the test.

PostgreSQL refuses to run as root: under root the server runs as the `postgres` user
(Debian's package creates it) through runuser."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from tests.servers import free_port
from tests.tls_certs import Issued


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in ("17", "16", "15", "14", "13"):
        candidate = Path(f"/usr/lib/postgresql/{version}/bin/{name}")
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(f"{name} not found: install postgresql (scripts/install-test-servers.sh)")


class PostgresServer:
    """With `password`, the `abgate` superuser has it and TCP connections must give it
    (scram-sha-256); `url` then carries it, `bare_url` does not. With `tls` (the server's
    certificate), the server speaks TLS too."""

    def __init__(
        self, directory: Path, *, password: str | None = None, tls: Issued | None = None
    ) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.bare_url = f"postgresql://abgate@127.0.0.1:{self.port}/postgres"
        self.url = (
            f"postgresql://abgate:{password}@127.0.0.1:{self.port}/postgres"
            if password
            else self.bare_url
        )
        self._as: list[str] = []
        self._account: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            self._account = pwd.getpwnam("postgres")
            os.chown(directory, self._account.pw_uid, self._account.pw_gid)

    def _own(self, path: Path) -> None:
        """A file the server reads (a private key must be the server user's, mode 0600)."""
        os.chmod(path, 0o600)
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    async def _run(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._as, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{output.decode()}")

    async def init(self) -> None:
        auth = ["-A", "trust"]
        if self.password is not None:
            secret = self.directory / "initdb-password"
            secret.write_text(self.password)
            self._own(secret)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={secret}"]
        await self._run(
            _binary("initdb"),
            "-D",
            str(self.data),
            *auth,
            "-U",
            "abgate",
            "--no-sync",
            "-E",
            "UTF8",
        )

    async def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )  # a crash of the server, not the OS
        if self.tls is not None:  # copies the server user owns, as PostgreSQL requires
            cert, key = self.directory / "server.pem", self.directory / "server-key.pem"
            cert.write_bytes(self.tls.cert.read_bytes())
            key.write_bytes(self.tls.key.read_bytes())
            self._own(cert)
            self._own(key)
            options += f" -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}"
        await self._run(
            _binary("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "-l",
            str(self.directory / "log"),
            "start",
        )

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            await self._run(
                _binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"
            )

    async def kill(self) -> None:
        """SIGKILL the postmaster and its backends at once: what a crash of the database
        host looks like to clients (a backend left alive could go on taking writes)."""
        pid_file = self.data / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(30):
            for victim in victims:
                while _alive(victim):  # noqa: ASYNC110 (a process exit has no event here)
                    await asyncio.sleep(0.02)
        # `start` then recovers the data. The lock files go too: on a machine whose init
        # does not reap orphans the dead postmaster stays a zombie, and PostgreSQL would take
        # its pid in the lock files for a live server.
        pid_file.unlink(missing_ok=True)
        for lock in self.directory.glob(f".s.PGSQL.{self.port}*"):
            lock.unlink(missing_ok=True)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=10)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for its parent


@contextlib.asynccontextmanager
async def postgres_server(
    *, password: str | None = None, tls: Issued | None = None
) -> AsyncIterator[PostgresServer]:
    # Not pytest's tmp_path: its parents are private to root, and the server may run as
    # another user.
    directory = Path(tempfile.mkdtemp(prefix="abgate-pg-"))
    server = PostgresServer(directory, password=password, tls=tls)
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)
