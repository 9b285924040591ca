"""Route table: the first route whose path and method match a request wins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from config.model import RouteConfig

Target = TypeVar("Target")


class Router(Generic[Target]):
    """Maps (path, method) to whatever target each route was compiled to."""

    __slots__ = ("_routes",)

    def __init__(self, routes: Sequence[tuple[RouteConfig, Target]]) -> None:
        self._routes = tuple(
            (route.prefix, route.regex.match if route.regex else None, route.methods, target)
            for route, target in routes
        )

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
