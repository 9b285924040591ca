"""Route table: the first route whose path and method match a request wins."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeAlias, TypeVar

from abgate.config.model import RouteConfig

Target = TypeVar("Target")
# A route as matched: its prefix, its regex's match, its methods, and its target.
Entry: TypeAlias = tuple[
    str | None, Callable[[str], re.Match[str] | None] | None, frozenset[str] | None, Target
]


class Router(Generic[Target]):
    """Maps (path, method) to whatever target each route was compiled to."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Sequence[tuple[RouteConfig, Target]]) -> None:
        self._routes = tuple(entry(route, target) for route, target in routes)

    @classmethod
    def of(cls, entries: Iterable[Entry[Target]]) -> Router[Target]:
        """A table of routes compiled beforehand (`entry`), in order."""
        router = cls(())  # not cls.__new__: mypyc 2.4 cannot compile it on a Generic class
        router._routes = tuple(entries)
        return router

    def match(self, path: str, method: str) -> Target | None:
        for prefix, regex_match, methods, target in self._routes:
            if prefix is not None:
                if not path.startswith(prefix):
                    continue
            elif regex_match is not None and regex_match(path) is None:
                continue
            if methods is not None and method not in methods:
                continue
            return target
        return None


def entry(route: RouteConfig, target: Target) -> Entry[Target]:
    return (route.prefix, route.regex.match if route.regex else None, route.methods, target)
