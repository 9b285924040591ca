"""The one error a configuration can raise: every problem found, each with its place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file, where it is, and why."""

    path: str
    line: int | None
    message: str
    file: str | None = None  # when not the file loaded: the base file it extends

    def __str__(self) -> str:
        where = self.path or "<document>"
        place = f"{self.file} line" if self.file is not None else "line"
        if self.line is not None:
            where = f"{where} ({place} {self.line})"
        elif self.file is not None:
            where = f"{where} ({self.file})"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration was refused; `problems` lists everything that is wrong with it."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"{self.source}: {count} {noun}"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)
