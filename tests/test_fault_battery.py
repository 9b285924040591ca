"""The fault battery: every record sent is stored exactly once (or set aside, counted), and
no rollout is left unattended, whatever breaks between send and commit. Real PostgreSQL,
real redis-server, real abgate; each fault at the moment that matters.

    python -m tests.test_fault_battery       prints the table
    pytest tests/test_fault_battery.py       asserts every row

A row holds when stored + set aside = sent, nothing is stored twice, and no rollout is left
with its flag at a partial percentage and nobody watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from abgate.control.serve import Embedded, embedded
from abgate.state.history.writer import utc
from abgate.state.measurements import MemoryMeasurements
from abgate.state.redis_flags import RedisFlagStore
from abgate.state.state_file import StateFile
from tests.postgres_server import postgres_server
from tests.redis_server import redis_server
from tests.servers import demo_agents, make_config
from tests.test_history_exactly_once import decision, fetch, kill_at_commit, new_writer
from tests.test_measurements_exactly_once import redis_killed_mid_batch
from tests.test_rollout import polled
from tests.test_rollout_state import STATES, into_state, redis_config, view_once


@dataclass(frozen=True)
class Row:
    scenario: str
    sent: int
    stored: int  # distinct records stored
    twice: int  # records stored more than once
    set_aside: int  # refused, counted, never retried (dead letters, 400s)
    unattended: bool  # a rollout left at a partial percentage with nobody watching

    @property
    def holds(self) -> bool:
        return self.twice == 0 and self.stored + self.set_aside == self.sent and not self.unattended


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=30)) as client:
        yield client


async def history_poison_rows() -> Row:
    """1,000 decisions and two flag changes in one flush: ids PostgreSQL cannot take as they
    are (not UTF-8, a NUL) are made safe; rows it refuses (an int32 overflow, times no
    partition takes) are set aside one by one; the rest is written once."""
    refused: dict[int, dict[str, Any]] = {
        137: {"phase": 2**31},
        501: {"time": 4_102_444_800.0},
        502: {"time": 4.1e9},
    }
    odd_ids = {3: "\udcff\udcfe", 4: "nul\x00id", 5: "\ud800"}
    async with postgres_server() as postgres:
        writer = new_writer(postgres)
        for i in range(1000):
            writer.add_decision(decision(i, odd_ids.get(i), **refused.get(i, {})))
        writer.add("flag_changes", utc(1_800_000_000), "exp", 25.0, 2, 2, "ops", "why\x00")
        writer.add("flag_changes", utc(1_800_000_000), "exp", 25.0, 2**40, 3, "ops", "huge")
        await writer.flush()
        await writer.aclose()
        [(rows, distinct)] = await fetch(
            postgres, "SELECT count(*), count(DISTINCT request_id) FROM ab_testing.decisions"
        )
        [(changes,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.flag_changes")
        [(dead,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.dead_letters")
    return Row("history: poison rows", 1002, distinct + changes, rows - distinct, dead, False)


async def history_commit_time_kill() -> Row:
    """The writer's connection killed while its COMMIT waits (after the COPY): the flush is
    retried whole and adds nothing twice."""
    async with postgres_server() as postgres:
        writer = new_writer(postgres)
        await kill_at_commit(postgres, writer, 500)
        [(rows, distinct)] = await fetch(
            postgres, "SELECT count(*), count(DISTINCT request_id) FROM ab_testing.decisions"
        )
        [(changes,)] = await fetch(postgres, "SELECT count(*) FROM ab_testing.flag_changes")
    return Row("history: connection killed at COMMIT", 501, distinct + changes, rows - distinct,
               0, False)  # fmt: skip


async def outcome_1e308() -> Row:
    """Outcomes in three batches, the second holding a value whose square overflows: that
    batch is refused whole (400 naming the item), every other value is kept, and survives a
    restart from the state file."""
    good = {"experiment": "exp", "arm": "treatment", "metric": "satisfaction", "value": 2.0}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        async with demo_agents() as upstreams, session() as client:
            config = make_config(upstreams, flags={"state_file": str(state)})
            async with embedded(config) as running:
                refused = 0
                for batch in ([good] * 100, [good, {**good, "value": 1e308}], [good] * 10):
                    url = running.control_url + "/api/outcomes"
                    async with client.post(url, json=batch) as response:
                        refused += len(batch) if response.status == 400 else 0
        _, sums = await MemoryMeasurements(StateFile(state)).read("exp")
    stored = sum(s.count for s in sums.values())
    return Row("measurements: an outcome of 1e308", 112, stored, 0, refused, False)


async def redis_killed(cut: str) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        async with redis_server(Path(tmp), durable=True) as redis:
            sums, sent, _ = await redis_killed_mid_batch(redis, cut)  # type: ignore[arg-type]
    twice = max(0, sums.count - sent)
    where = "after applying" if cut == "reply" else "before applying"
    return Row(f"measurements: Redis killed {where} a batch", sent, sums.count - twice, twice,
               0, False)  # fmt: skip


async def redis_emptied_at(state: str) -> Row:
    """A rollout in `state`, Redis restarted empty: the rollout's history and the flag's
    audit trail come back (each record once), the flag as it was, and the rollout at its
    stage, watched again (under way: its stage restarted)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            redis_server(Path(tmp)) as redis,
            demo_agents() as upstreams,
            session() as client,
            embedded(redis_config(upstreams, redis)) as running,
        ):
            writer = running.backend.store
            assert isinstance(writer, RedisFlagStore)
            await into_state(client, running, state)
            before = await records(running, writer)
            flag, reseeded = running.flags.get("exp"), writer.reseeded
            await redis.kill()
            await redis.start()
            view = await view_once(client, running, lambda v: v["state"] == state)
            await polled(lambda: writer.reseeded > reseeded)
            after = [r for r in await records(running, writer) if "restored" not in r]
            watched = view["stage"]["percentage"] * 100 == flag.basis_points or not (
                0 < flag.basis_points < 10_000
            )
            same_flag = running.flags.get("exp") == flag
    stored = sum(1 for record in before if record in after)
    return Row(f"rollout: Redis emptied while {state}", len(before), stored,
               len(after) - len(set(after)), 0, not (watched and same_flag))  # fmt: skip


async def records(running: Embedded, writer: RedisFlagStore) -> list[str]:
    """The rollout's history entries and the flag's audit entries, as comparable text."""
    events = await running.rollouts.rollouts.history("exp", 1000)
    audit = await writer.history("exp", 1000)
    return [repr(sorted(e.items())) for e in events] + [
        f"flag v{e['version']} {e['percentage']}% by {e['updated_by']}" for e in audit
    ]


Scenario = Callable[[], Awaitable[Row]]
SCENARIOS: dict[str, Scenario] = {
    "history-poison-rows": history_poison_rows,
    "history-commit-kill": history_commit_time_kill,
    "outcome-1e308": outcome_1e308,
    "redis-killed-after-apply": lambda: redis_killed("reply"),
    "redis-killed-before-apply": lambda: redis_killed("request"),
    **{f"redis-emptied-{state}": partial(redis_emptied_at, state) for state in STATES},
    "redis-emptied-aborted": partial(redis_emptied_at, "aborted"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_the_fault_battery(name: str) -> None:
    row = await SCENARIOS[name]()
    assert row.holds, row


def table(rows: list[Row]) -> str:
    head = ("scenario", "sent", "stored", "twice", "set aside", "unattended", "")
    lines = [head] + [
        (r.scenario, str(r.sent), str(r.stored), str(r.twice), str(r.set_aside),
         "yes" if r.unattended else "no", "ok" if r.holds else "FAILED")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def render(line: tuple[str, ...]) -> str:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                 enumerate(zip(line, widths, strict=True))]  # fmt: skip
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([render(lines[0]), rule, *map(render, lines[1:])])


async def main() -> int:
    rows = []
    for name, scenario in SCENARIOS.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append(await scenario())
    print(table(rows))
    return 0 if all(row.holds for row in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
