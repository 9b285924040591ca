"""Keep what a reload did not change, rebuild what it did: one helper for every keyed part
of the data plane (pools, breakers, shadows)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar


class Configured(Protocol):
    @property
    def config(self) -> Any: ...


K = TypeVar("K")
C = TypeVar("C")
V = TypeVar("V", bound=Configured)


def rebuild(
    old: Mapping[K, V], wanted: Mapping[K, C], make: Callable[[K, C], V]
) -> tuple[dict[K, V], list[V]]:
    """(the new map, the retired parts): a part is kept, state and all, while its config is
    equal to the wanted one, and made anew otherwise; parts no longer wanted or replaced are
    retired (the caller closes them once requests in flight are done)."""
    kept: dict[K, V] = {}
    for key, config in wanted.items():
        part = old.get(key)
        kept[key] = part if part is not None and part.config == config else make(key, config)
    alive = set(map(id, kept.values()))
    return kept, [part for part in old.values() if id(part) not in alive]
