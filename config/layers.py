"""A configuration file that overrides another: `extends: base.yaml` at the top.

An override file names the file it builds on (relative to itself) and holds only what it
changes, as Helm's `-f` values files and Docker Compose's override files do: mappings merge
key by key, anything else (a list, a scalar, null) replaces what the base had. The demo's
shortened durations are such a file (tests/acceptance/fast.yaml), so the acceptance stack
runs the demo config itself, not a copy of it.

Every key keeps the place it was written: a problem in a key the base file set names the
base file and its line, one the override set names the override's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from abgate.config.errors import ConfigError, Problem
from abgate.config.fields import kind_of
from abgate.config.yaml_lines import KeyPath, LocatedDocument, load_located

EXTENDS = "extends"
MAX_DEPTH = 8  # files extending files; deeper is a mistake, not a design
# A configuration is kilobytes; a file this large is a mistake (or an attack) that parsing
# would spend seconds and gigabytes on (a 50 MB file took 47 s).
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class BaseRefused(ConfigError):
    """The file loaded extends one that was refused as a whole (missing, not YAML): `own` is
    the loaded file's own document, which can still be judged on what depends on no base
    (its unknown keys: config/parse.py)."""

    def __init__(self, source: str, problems: tuple[Problem, ...], own: LocatedDocument) -> None:
        super().__init__(source, problems)
        self.own = own


def read_layered(path: str | Path) -> LocatedDocument:
    """The file at `path`, merged over the files it extends; raises ConfigError."""
    return _read(Path(path), str(path), ())


def _read(path: Path, source: str, chain: tuple[Path, ...]) -> LocatedDocument:
    try:
        with open(path, "rb") as handle:  # no further than the limit
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            limit = f"{MAX_CONFIG_BYTES // (1024 * 1024)} MiB"
            raise ConfigError(source, [Problem("", None, f"the file is over {limit}: refused")])
        text = raw.decode("utf-8")
    except FileNotFoundError as exc:
        # Which command or option named the file is the caller's to say, not the config's
        # (a file that extends it is said where it is named: `_base`).
        problem = Problem("", None, f"no such file (looked for {path.absolute()})")
        raise ConfigError(source, [problem]) from exc
    except IsADirectoryError as exc:
        problem = Problem("", None, "is a directory, not a config file")
        raise ConfigError(source, [problem]) from exc
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(source, [Problem("", None, f"cannot read the file: {reason}")]) from exc
    except UnicodeDecodeError as exc:
        at = exc.object[: exc.start].count(b"\n") + 1  # the line: `(line N)` says it
        problem = Problem("", at, f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x}")
        raise ConfigError(source, [problem]) from exc
    doc = load_located(text, source)
    if not isinstance(doc.value, dict) or EXTENDS not in doc.value:
        return doc
    base_name = doc.value[EXTENDS]
    if not isinstance(base_name, str) or not base_name:
        line = doc.line_of((EXTENDS,))
        problem = Problem(EXTENDS, line, "expected the path of the file this one overrides")
        raise ConfigError(source, [problem])
    resolved = path.resolve()
    base_path = path.parent / base_name
    if base_path.resolve() in (*chain, resolved) or len(chain) >= MAX_DEPTH:
        line = doc.line_of((EXTENDS,))
        problem = Problem(EXTENDS, line, f"{base_name} extends this file again (a cycle)")
        raise ConfigError(source, [problem])
    own = LocatedDocument(
        {key: value for key, value in doc.value.items() if key != EXTENDS},
        doc.lines,
        problems=doc.problems,
    )
    try:
        base = _base(base_path, (*chain, resolved))
    except ConfigError as exc:
        if chain:
            raise
        raise BaseRefused(source, exc.problems, own) from exc
    merged = merge(base, own, str(base_path))
    return dataclasses.replace(merged, bases=(str(base_path), *base.bases))


def _base(path: Path, chain: tuple[Path, ...]) -> LocatedDocument:
    """The base file at `path`, extended by `chain[-1]`. A problem of the file as a whole
    (missing, unreadable, not YAML) names the file, and the file that extends it: a reload
    watches the files its problems name, so a base created or fixed later is picked up."""
    try:
        doc = _read(path, str(path), chain)
        if not isinstance(doc.value, dict):  # merged, it would count as an empty override
            got = "nothing" if doc.value is None else kind_of(doc.value)
            problem = Problem("", 1, f"expected a mapping of settings, got {got}")
            raise ConfigError(str(path), [problem])
        return doc
    except ConfigError as exc:
        problems = [
            p
            if p.file is not None
            else dataclasses.replace(
                p, file=str(path), message=f"{p.message}; extended by {chain[-1]}"
            )
            for p in exc.problems
        ]
        raise ConfigError(exc.source, problems) from exc


def merge(base: LocatedDocument, override: LocatedDocument, base_source: str) -> LocatedDocument:
    """`override` over `base`: mappings key by key, anything else replaced whole. Paths that
    come from `base` remember `base_source` (or the file the base had them from)."""
    lines: dict[KeyPath, int] = dict(base.lines)
    files: dict[KeyPath, str] = {path: base.files.get(path, base_source) for path in base.lines}

    def take(path: KeyPath) -> None:
        """The subtree at `path` now comes from the override: drop the base's places."""
        for known in [p for p in lines if p[: len(path)] == path]:
            del lines[known]
            files.pop(known, None)
        for known, line in override.lines.items():
            if known[: len(path)] == path:
                lines[known] = line
                if known in override.files:
                    files[known] = override.files[known]

    def walk(old: Any, new: Any, path: KeyPath) -> Any:
        if isinstance(old, dict) and isinstance(new, dict):
            out = dict(old)
            for key, value in new.items():
                child = (*path, key)
                if key in old:
                    out[key] = walk(old[key], value, child)
                else:
                    take(child)
                    out[key] = value
            if path in override.lines:
                lines[path] = override.lines[path]
                files.pop(path, None)
            return out
        take(path)
        return new

    value = walk(base.value, override.value, ())
    problems = (
        *(dataclasses.replace(p, file=p.file or base_source) for p in base.problems),
        *override.problems,
    )
    return LocatedDocument(value, lines, files, problems)
