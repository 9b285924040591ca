"""A real PostgreSQL for the tests: initdb and pg_ctl in a temporary directory, on an
ephemeral port on 127.0.0.1, trust authentication; stopped (or killed) by the test.

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
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql://abgate@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            account = pwd.getpwnam("postgres")
            os.chown(directory, account.pw_uid, account.pw_gid)

    async def _run(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self._as, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(proc.communicate(), 120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{output.decode()}")

    async def init(self) -> None:
        await self._run(
            _binary("initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
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
async def postgres_server() -> AsyncIterator[PostgresServer]:
    # Not pytest's tmp_path: its parents are private to root, and the server may run as
    # another user.
    directory = Path(tempfile.mkdtemp(prefix="abgate-pg-"))
    server = PostgresServer(directory)
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)
