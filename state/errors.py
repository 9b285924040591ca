"""The one error of the live-state layer, mapped once from what its backends raise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from abgate.config.errors import AbgateError


class StoreUnavailable(AbgateError):
    """The store cannot serve this call right now (Redis down, a file that cannot be
    written); nothing was changed."""


@contextmanager
def store_errors() -> Iterator[None]:
    """Map the backends' errors to StoreUnavailable: `with store_errors(): await ...`."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(str(exc)) from exc
