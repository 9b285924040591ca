"""The optional mypyc build of the data plane (`make compile`, scripts/compile_data_plane.py)
builds, starts and serves. It broke twice without a test: mypyc 2.4 could not compile
`cls.__new__` on a Generic class, and compiled a generator over an infinite count into a
list, so the compiled proxy never started listening."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from aiohttp import ClientSession

from scripts.compile_data_plane import MODULES, build
from tests.processes import LISTENING, config_document, write_config
from tests.servers import echo_app, serve_app

ROOT = Path(__file__).resolve().parent.parent
KEEP = ("abgate", "config", "proxy", "state", "control", "scripts", "pyproject.toml")


async def test_the_compiled_data_plane_builds_starts_and_serves(
    tmp_path: Path, session: ClientSession
) -> None:
    copy = tmp_path / "compiled"
    copy.mkdir()
    for name in KEEP:  # the links under abgate/ resolve to the copies beside them
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, symlinks=True, ignore=_caches)
        else:
            shutil.copy(source, copy / name)
    await asyncio.to_thread(build, copy)
    built = {path.name.split(".", 1)[0] for path in (copy / "proxy").glob("*.so")}
    assert set(MODULES) <= built
    async with serve_app(echo_app()) as upstream:
        config = write_config(tmp_path / "abgate.yaml", config_document(upstream))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "abgate.control.cli",
            "proxy",
            "--config",
            str(config),
            cwd=copy,  # its abgate first: the compiled modules, imported before their .py
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(60):
                while (found := LISTENING.search((await proc.stdout.readline()).decode())) is None:
                    assert proc.returncode is None
            assert found.group(1) == "proxy"
            async with session.get(f"{found.group(2)}/hello") as response:
                assert response.status == 200
                assert (await response.json())["path_qs"] == "/hello"
        finally:
            proc.terminate()
            await proc.wait()


def _caches(_folder: str, names: list[str]) -> set[str]:
    return {name for name in names if name in {"__pycache__", "build"} or name.endswith(".so")}
