"""A/A simulation of the sequential test on 0/1 metrics (issue 10): how often does it reject
equal rates when looked at from n = 2 on, at the splits of a real rollout? Uses the shipped
`control.stats.sequential.sequential_rates` (and, for comparison, the plug-in variance it
replaced). Writes the "sequential-rates" section of benchmarks/RESULTS.md; the test suite
runs a smaller, seeded version of the same function."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

from abgate.control.stats.models import Proportion, SampleMean, StatsInputError
from abgate.control.stats.sequential import (
    sequential_rates,
    sequential_sample_size,
    sequential_test,
)
from benchmarks.common import verdict, write_section

SPLITS = (0.01, 0.05, 0.10, 0.25)
BASE_RATES = (0.001, 0.01, 0.10)
Test = Callable[[Proportion, Proportion], bool]


def pooled_with_burn_in(a: Proportion, b: Proportion) -> bool:
    try:
        return sequential_rates(a, b).significant
    except StatsInputError:
        return False  # not enough data yet: no decision


def plug_in(a: Proportion, b: Proportion) -> bool:
    try:
        return sequential_test(a.as_mean(), b.as_mean()).significant
    except StatsInputError:
        return False


def aa_rejection_rate(
    split: float, base: float, *, sims: int, users: int, seed: int, test: Test = pooled_with_burn_in
) -> float:
    """Share of A/A experiments (both arms at `base`) that the test ever rejects, looking
    after every arrival up to 40, then every 20."""
    rng = random.Random(seed)
    looks = set(range(2, 40)) | set(range(40, users + 1, 20))
    rejected = 0
    for _ in range(sims):
        na = nb = xa = xb = 0
        for index in range(1, users + 1):
            if rng.random() < split:
                nb += 1
                xb += rng.random() < base
            else:
                na += 1
                xa += rng.random() < base
            if (
                index in looks
                and na >= 2
                and nb >= 2
                and test(Proportion(na, xa), Proportion(nb, xb))
            ):
                rejected += 1
                break
    return rejected / sims


def power_at_planned_n(
    effect: float, *, share: float, sims: int, seed: int, look_every: int = 20
) -> tuple[int, float]:
    """(planned total n, share of experiments the sequential test of means rejects by then)
    for a true difference `effect` between two arms of unit variance, sized by
    `sequential_sample_size` and looked at every `look_every` arrivals."""
    n_a, n_b = sequential_sample_size(effect, 1.0, 1.0, share=share)
    users = n_a + n_b
    rng = random.Random(seed)
    detected = 0
    for _ in range(sims):
        sums = [[0, 0.0, 0.0], [0, 0.0, 0.0]]  # count, sum, sum of squares per arm
        for index in range(1, users + 1):
            arm = 1 if rng.random() < share else 0
            value = rng.gauss(effect if arm else 0.0, 1.0)
            entry = sums[arm]
            entry[0] += 1
            entry[1] += value
            entry[2] += value * value
            if index % look_every or sums[0][0] < 2 or sums[1][0] < 2:
                continue
            a, b = (SampleMean.from_sums(int(c), t, q) for c, t, q in sums)
            if sequential_test(a, b).significant:
                detected += 1
                break
    return users, detected / sims


def main() -> int:
    sims, users = 1000, 4000
    started = time.perf_counter()
    rows, worst = [], 0.0
    for split in SPLITS:
        for base in BASE_RATES:
            shipped = aa_rejection_rate(split, base, sims=sims, users=users, seed=1)
            old = aa_rejection_rate(split, base, sims=sims // 4, users=users, seed=1, test=plug_in)
            worst = max(worst, shipped)
            rows.append(f"| {split:.0%} | {base:.1%} | {old:.3f} | {shipped:.3f} |")
            print(rows[-1], flush=True)
    text = f"""## Sequential test on rates at small splits (issue 10)

Measured by `make bench` (`benchmarks/sequential_rates.py`) on {time.strftime("%Y-%m-%d")}:
A/A experiments (both arms at the base rate), {users} users each, looked at after every
arrival up to 40 and then every 20 (the worker looks every few seconds from the first
request); share ever rejected at alpha = 0.05. "Plug-in" is the test before the fix (each
arm's own variance; {sims // 4} experiments per row), "shipped" the pooled null variance with
its burn-in ({sims} experiments per row; {time.perf_counter() - started:.0f} s in all).

| treatment share | base rate | plug-in | shipped |
|---|---|---:|---:|
{chr(10).join(rows)}

Worst shipped rate {worst:.3f} (target at most alpha = 0.05: {verdict(worst <= 0.05)}). The
burn-in (10 events of the rarer outcome in all, one expected in the smaller arm) is what
keeps the tiniest splits honest; before it, a first event in the big arm was "significant".
"""
    power_rows = []
    lowest = 1.0
    for effect, share in ((0.1, 0.5), (0.2, 0.5), (0.2, 0.1)):
        users, power = power_at_planned_n(effect, share=share, sims=500, seed=3)
        lowest = min(lowest, power)
        power_rows.append(f"| {effect} | {share:.0%} | {users:,} | {power:.3f} |")
    text += f"""
Sample sizes for the sequential design (`sequential_sample_size`, issue 10 item 5): a true
difference of `effect` standard deviations, sized for 80% power, then 500 simulated
experiments looked at every 20 arrivals with the shipped sequential test of means.

| effect (sd) | treatment share | planned users | share detected by then |
|---|---|---:|---:|
{chr(10).join(power_rows)}

Lowest {lowest:.3f} (target at least the planned 0.80: {verdict(lowest >= 0.78)}, allowing
the simulation's own error of about 0.02).
"""
    write_section("sequential-rates", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
