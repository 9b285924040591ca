"""Hot config reload: SIGHUP, a change of the file, or POST /api/config/reload.

The file is validated as a whole first, in a process of its own (control/config_process.py:
bounded in size, aliases and time, and never on an event loop that serves requests); an
invalid one is refused with the same line-numbered problems as `abgate check-config`, the
running config stays, and the failure shows in the log, in GET /api/config and in
abgate_config_reload_total{result="failure"}.

One change is one reload, whoever notices it first: the watcher waits until the file has
stayed the same for one whole interval (an editor's or `write_text`'s truncate-then-write
would otherwise be read half-written), and a reload of exactly the text already running
answers "unchanged" without applying or counting anything (the watcher and an API call
racing for the same change). "The same" is judged on the validated config, so a change to a
file it `extends`, or one of comments only, is judged by what it means.

The watcher looks at every file of the `extends:` chain (config/layers.py), as the running
config read it (`Config.bases`); each reload reads the chain afresh, and the files watched
follow it. A refused reload adds the files its problems name (a base just added to the
chain, and broken), so fixing one is picked up too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import Metric

from abgate.config import Config, ConfigError, metrics_catalogue
from abgate.control.config_process import ParsedConfig, parse_off_loop

log = logging.getLogger("abgate.reload")
WATCH_INTERVAL = 1.0


@dataclass
class ReloadOutcome:
    result: str  # "success" | "failure" | "unchanged" (the running text: nothing applied)
    trigger: str
    at: float
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


Apply = Callable[[ParsedConfig], Awaitable[list[str]]]
Parse = Callable[[Path], Awaitable[ParsedConfig]]
Stamp = tuple[tuple[float, int, int] | None, ...]  # of each file watched


class Reloader:
    """Reloads `path` into `apply` (which returns what it could not apply live)."""

    def __init__(
        self, path: str | Path, config: Config, apply: Apply, parse: Parse = parse_off_loop
    ) -> None:
        self.path = Path(path)
        self.config = config
        self._apply = apply
        self._parse = parse
        self.loaded_at = time.time()
        self.last: ReloadOutcome | None = None
        self.counts = {"success": 0, "failure": 0}
        self.checks = 0  # the watcher's looks at the file
        self._lock = asyncio.Lock()  # one reload at a time; never taken on the request path
        self._requested = asyncio.Event()
        self._outcome = asyncio.Condition()  # notified at each outcome
        self.outcomes = 0  # reloads ended, whatever their result
        self.watched = self._chain(config)
        self._seen = self._stamp()  # the files as last loaded
        self._changing: Stamp | None = None  # a new stamp, not yet settled

    async def reload(self, trigger: str) -> ReloadOutcome:
        async with self._lock:
            # Whatever asked, the file as read now is handled: the watcher must not reload
            # the same change again.
            self._seen = self._stamp()
            named: tuple[str, ...] = ()  # files a refusal's problems are in
            try:
                parsed = await self._parse(self.path)
                if parsed.config == self.config:
                    log.info("config reload (%s): the file is the running config", trigger)
                    return await self._ended(ReloadOutcome("unchanged", trigger, time.time()))
                warnings = await self._apply(parsed)
            except ConfigError as exc:
                named = tuple(problem.file for problem in exc.problems if problem.file)
                outcome = ReloadOutcome(
                    "failure", trigger, time.time(), problems=[str(p) for p in exc.problems]
                )
                log.error(
                    "config reload (%s) refused; keeping the running config:\n%s",
                    trigger,
                    exc.render(),
                )
            except Exception as exc:  # whatever it was, the reloader lives on
                outcome = ReloadOutcome(
                    "failure", trigger, time.time(), problems=[f"{type(exc).__name__}: {exc}"]
                )
                log.error(
                    "config reload (%s) failed; keeping the running config: %s",
                    trigger,
                    outcome.problems[0],
                    exc_info=exc,
                )
            else:
                self.config, self.loaded_at = parsed.config, time.time()
                outcome = ReloadOutcome("success", trigger, self.loaded_at, warnings=warnings)
                log.info("config reloaded (%s) from %s", trigger, self.path)
                for warning in warnings:
                    log.warning("config reload: %s", warning)
            return await self._ended(outcome, named)

    async def _ended(self, outcome: ReloadOutcome, named: tuple[str, ...] = ()) -> ReloadOutcome:
        if outcome.result in self.counts:
            self.counts[outcome.result] += 1
        self._watch(named)
        self.last = outcome
        self.outcomes += 1
        async with self._outcome:
            self._outcome.notify_all()
        return outcome

    async def next_outcome(self, after: int) -> ReloadOutcome:
        """The outcome of the first reload that ends once `after` reloads have."""
        async with self._outcome:
            await self._outcome.wait_for(lambda: self.outcomes > after)
        assert self.last is not None
        return self.last

    def _chain(self, config: Config) -> tuple[Path, ...]:
        return (self.path, *(Path(base) for base in config.bases))

    def _watch(self, named: tuple[str, ...]) -> None:
        """Watch the running config's chain and the files a refusal `named`; a file new to
        the watch is stamped as it is now."""
        watched = tuple(dict.fromkeys((*self._chain(self.config), *map(Path, named))))
        if watched != self.watched:
            seen = dict(zip(self.watched, self._seen, strict=True))
            self.watched = watched
            self._seen = tuple(seen[path] if path in seen else _stamp(path) for path in watched)

    def request(self) -> None:
        """Ask for a reload from a signal handler (sync); `run` carries it out."""
        self._requested.set()

    async def run(self, *, watch: bool = True) -> None:
        """Owned background task: reload on request, and when the file changes."""
        while True:
            try:
                await asyncio.wait_for(self._requested.wait(), WATCH_INTERVAL if watch else None)
                self._requested.clear()
                await self.reload("signal")
            except TimeoutError:
                self.checks += 1
                stamp = self._stamp()
                if stamp == self._seen:
                    self._changing = None
                elif stamp != self._changing:
                    self._changing = stamp  # changed since the last look: let it settle
                else:
                    self._changing = None
                    await self.reload("file change")

    def _stamp(self) -> Stamp:
        return tuple(_stamp(path) for path in self.watched)

    @property
    def refused(self) -> bool:
        """The file's last reload was refused: the config served is the one before it."""
        return self.last is not None and self.last.result == "failure"

    def collect(self) -> Iterator[Metric]:
        total = metrics_catalogue.CONFIG_RELOADS.new()
        for result, count in self.counts.items():
            total.add_metric([result], count)
        yield total
        # Prometheus' own prometheus_config_last_reload_successful, for the same alert.
        ok = metrics_catalogue.CONFIG_LAST_RELOAD_OK.new()
        ok.add_metric([], 0.0 if self.refused else 1.0)
        yield ok
        loaded = metrics_catalogue.CONFIG_LOADED_AT.new()
        loaded.add_metric([], self.loaded_at)
        yield loaded


def _stamp(path: Path) -> tuple[float, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime, info.st_size, info.st_ino
