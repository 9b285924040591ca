"""What a rollout action that cannot be done says: the errors the control API maps to 409,
404 and 400, and the promotion that meets a flag a person changed (a 409 naming who).

Apart from the controller so that the API, the evidence page and the actions import them
without importing the controller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from abgate.config.errors import AbgateError
from abgate.state.flags import VersionConflict


class RolloutError(AbgateError):
    """A rollout action that cannot be done now (the API answers 409)."""


class UnknownRollout(RolloutError):
    """No such experiment, rollout or action (404)."""


class NoRolloutPlan(RolloutError):
    """The experiment has no rollout plan to run (400)."""


@contextlib.contextmanager
def changed_by_hand(name: str) -> Iterator[None]:
    """A person's promotion that meets a flag changed by hand since the rollout last looked:
    a clear 409 (resume first, which adopts the new version), not an internal error."""
    try:
        yield
    except VersionConflict as exc:
        current = exc.current
        raise RolloutError(
            f"{name} was changed by {current.updated_by} to {current.percentage:g}% "
            f"(version {current.version}) since the rollout last saw it (version "
            f"{exc.expected}); nothing was changed: resume the rollout first, or abort it"
        ) from None
