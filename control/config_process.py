"""Configs for reloads parsed in a process of their own, so no event loop waits on YAML.

PyYAML is pure Python: parsing a large file in a thread still holds the GIL for most of the
time, and the proxy's loop stalled up to 0.98 s while a 50 MB file was read. A reload here
runs `python -m control.config_process FILE` with a time limit; the child reads the file
(bounded: config.parse.MAX_CONFIG_BYTES, aliases too: config.yaml_lines), validates it and
writes one pickle to stdout: the frozen Config, or the problems that refused it. The parent
unpickles (milliseconds for a megabyte) and keeps the bytes: they are what `abgate run`'s
control process sends its data plane (control/live_plane.py), between processes of one
installation, over a socket only this user can open.
"""

from __future__ import annotations

import asyncio
import copyreg
import hashlib
import io
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from config import Config, ConfigError, Problem, parse_config, read_config

PARSE_TIMEOUT = 30.0  # seconds: a file within the limits parses in well under one


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    config: Config
    blob: bytes  # the Config pickled: what a data plane is sent
    digest: str  # sha256 of the file's text: which file a process runs


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def frozen_mapping(items: dict[str, Any]) -> MappingProxyType[str, Any]:
    """Unpickling side of a MappingProxyType (which pickle cannot name by itself)."""
    return MappingProxyType(items)


def _reduce_mapping(mapping: MappingProxyType[str, Any]) -> tuple[Any, tuple[dict[str, Any]]]:
    return frozen_mapping, (dict(mapping),)


def dumps(value: object) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {**copyreg.dispatch_table, MappingProxyType: _reduce_mapping}
    pickler.dump(value)
    return buffer.getvalue()


def loads_config(blob: bytes) -> Config:
    config = pickle.loads(blob)
    if not isinstance(config, Config):
        raise TypeError(f"expected a pickled Config, got {type(config).__name__}")
    return config


def parse_file(path: str | Path) -> ParsedConfig:
    """Read and validate in this process (at start, before anything is served)."""
    text = read_config(path)
    config = parse_config(text, str(path))
    return ParsedConfig(config, dumps(config), digest_of(text))


async def parse_off_loop(path: str | Path, within: float = PARSE_TIMEOUT) -> ParsedConfig:
    """Read and validate `path` in a child process; ConfigError when refused (a parse
    past `within` seconds included: the child is killed)."""
    source = str(path)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "control.config_process",
        source,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(), within)
    except TimeoutError:
        raise ConfigError(
            source, [Problem("", None, f"parsing took over {within:g}s: refused")]
        ) from None
    finally:
        if child.returncode is None:  # timed out or cancelled: the child goes too
            child.kill()
            await child.wait()
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the config parser exited with status {child.returncode}: {tail[0]}")
    answer = pickle.loads(out)
    if answer[0] == "refused":
        raise ConfigError(answer[1], answer[2])
    _, blob, digest = answer
    return ParsedConfig(loads_config(blob), blob, digest)


def main(path: str) -> int:
    try:
        parsed = parse_file(path)
    except ConfigError as exc:
        answer: tuple[Any, ...] = ("refused", exc.source, list(exc.problems))
    else:
        answer = ("ok", parsed.blob, parsed.digest)
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    # Run as control.config_process, not __main__: the pickle names frozen_mapping there.
    from control.config_process import main as run

    sys.exit(run(sys.argv[1]))
