"""Configs for reloads parsed in a process of their own, so no event loop waits on YAML.

PyYAML is pure Python: parsing a large file in a thread still holds the GIL for most of the
time, and the proxy's loop stalled up to 0.98 s while a 50 MB file was read. A reload here
runs `python -m abgate.control.config_process FILE` with a time limit; the child reads the file
(bounded: config.layers.MAX_CONFIG_BYTES, aliases too: config.yaml_lines), validates it and
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
import os
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from abgate.config import Config, ConfigError, Problem

PARSE_TIMEOUT = 30.0  # seconds: a file within the limits parses in a few
PIECE = 100  # routes, upstreams or experiments per pickled piece: well under 1 ms to load
NICE = 10


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    config: Config
    blob: bytes  # the Config pickled: what a data plane is sent
    digest: str  # which config a process runs (digest_of)


def digest_of(config: Config) -> str:
    """Which config a process runs, the same in every process that parsed the same files
    (a pickle is not: a set's order follows string hashing, which differs per process)."""
    return hashlib.sha256(orjson.dumps(_canonical(config))).hexdigest()


def _canonical(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return [type(value).__name__, *(_canonical(getattr(value, f.name)) for f in fields(value))]
    if isinstance(value, Mapping):
        return [[str(key), _canonical(item)] for key, item in value.items()]
    if isinstance(value, frozenset | set):
        return sorted((_canonical(item) for item in value), key=repr)
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, re.Pattern):
        return value.pattern
    return repr(value)


def frozen_mapping(items: dict[str, Any]) -> MappingProxyType[str, Any]:
    """Unpickling side of a MappingProxyType (which pickle cannot name by itself)."""
    return MappingProxyType(items)


def _reduce_mapping(mapping: MappingProxyType[str, Any]) -> tuple[Any, tuple[dict[str, Any]]]:
    return frozen_mapping, (dict(mapping),)


def _pickled(value: object) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {**copyreg.dispatch_table, MappingProxyType: _reduce_mapping}
    pickler.dump(value)
    return buffer.getvalue()


def dumps(config: Config) -> bytes:
    """The Config pickled in pieces: its long fields (routes, upstreams, experiments) in
    slices of PIECE items, so a data plane can unpickle it a slice at a time between
    requests (a megabyte at once held its loop 80 ms)."""
    pieces: dict[str, list[bytes]] = {}
    light: dict[str, Any] = {}
    for name in ("routes", "upstreams", "experiments"):
        value = getattr(config, name)
        items = list(value.items()) if isinstance(value, Mapping) else list(value)
        if len(items) > PIECE:
            pieces[name] = [_pickled(items[i : i + PIECE]) for i in range(0, len(items), PIECE)]
            light[name] = MappingProxyType({}) if isinstance(value, Mapping) else ()
    return _pickled((replace(config, **light), pieces))


def loads_config(blob: bytes) -> Config:
    head, pieces = _head(blob)
    return _assembled(head, {name: [pickle.loads(p) for p in ps] for name, ps in pieces.items()})


async def loads_config_gradually(blob: bytes) -> Config:
    """`loads_config`, handing the event loop back after each piece."""
    head, pieces = _head(blob)
    loaded: dict[str, list[Any]] = {}
    for name, slices in pieces.items():
        loaded[name] = []
        for piece in slices:
            await asyncio.sleep(0)
            loaded[name].append(pickle.loads(piece))
    return _assembled(head, loaded)


def _head(blob: bytes) -> tuple[Config, dict[str, list[bytes]]]:
    head, pieces = pickle.loads(blob)
    if not isinstance(head, Config):
        raise TypeError(f"expected a pickled Config, got {type(head).__name__}")
    return head, pieces


def _assembled(head: Config, loaded: dict[str, list[Any]]) -> Config:
    whole: dict[str, Any] = {}
    for name, slices in loaded.items():
        items = [item for piece in slices for item in piece]
        whole[name] = tuple(items) if name == "routes" else MappingProxyType(dict(items))
    return replace(head, **whole)


def parse_file(path: str | Path) -> ParsedConfig:
    """Read and validate in this process (at start, before anything is served)."""
    from abgate.config.parse import load_config  # the parser: only where a file is read

    config = load_config(path)
    return ParsedConfig(config, dumps(config), digest_of(config))


async def parse_off_loop(path: str | Path, within: float = PARSE_TIMEOUT) -> ParsedConfig:
    """Read and validate `path` in a child process; ConfigError when refused (a parse
    past `within` seconds included: the child is killed)."""
    source = str(path)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "abgate.control.config_process",
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
    # Below the data plane in the CPU's queue: on a busy machine the parse waits, not the
    # requests (pure-Python YAML takes seconds of CPU for a megabyte).
    os.nice(NICE)
    try:
        parsed = parse_file(path)
    except ConfigError as exc:
        answer: tuple[Any, ...] = ("refused", exc.source, list(exc.problems))
    else:
        answer = ("ok", parsed.blob, parsed.digest)
    sys.stdout.buffer.write(_pickled(answer))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    # Run as abgate.control.config_process, not __main__: the pickle names frozen_mapping there.
    from abgate.control.config_process import main as run

    sys.exit(run(sys.argv[1]))
