"""The keyed-rebuild helper every reloaded part of the data plane goes through."""

from __future__ import annotations

from dataclasses import dataclass

from abgate.proxy.rebuild import rebuild


@dataclass(eq=False)
class Part:
    config: int


def test_unchanged_parts_are_kept_changed_and_gone_ones_retired() -> None:
    old = {"same": Part(1), "changed": Part(2), "gone": Part(3)}
    made: list[str] = []

    def make(key: str, config: int) -> Part:
        made.append(key)
        return Part(config)

    new, retired = rebuild(old, {"same": 1, "changed": 20, "added": 4}, make)
    assert new["same"] is old["same"]  # state and all
    assert new["changed"].config == 20
    assert new["changed"] is not old["changed"]
    assert sorted(made) == ["added", "changed"]
    assert retired == [old["changed"], old["gone"]]
