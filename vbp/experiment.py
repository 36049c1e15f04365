"""Replications of a scenario, in-process or on a local process pool, with identical results.

A replication is the pure function `run_replication(scenario, seed, rep)`; results are ordered by
replication number, so the worker count never changes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pandas as pd

from vbp.model import run_replication
from vbp.records import Replication, to_frames
from vbp.scenario import Scenario

__all__ = ["RunResult", "run", "default_workers"]


@dataclass
class RunResult:
    """All replications of one scenario run, as tables, with what produced them."""

    scenario: Scenario
    seed: int
    replications: int
    frames: dict[str, pd.DataFrame]
    wall_s: float
    solve_s: float
    workers: int


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _one(args: tuple[Scenario, int, int]) -> Replication:
    scenario, seed, rep = args
    return run_replication(scenario, seed, rep)


def run(scenario: Scenario, *, replications: int = 10, seed: int = 0, workers: int | None = None,
        progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Run `replications` replications (0..n-1) of the scenario and stack their records."""
    t0 = time.perf_counter()
    workers = min(workers or default_workers(), replications)
    tasks = [(scenario, seed, rep) for rep in range(replications)]
    reps: list[Replication] = []
    if workers <= 1:
        for i, task in enumerate(tasks):
            reps.append(_one(task))
            if progress:
                progress(i + 1, replications)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, rep in enumerate(pool.map(_one, tasks)):
                reps.append(rep)
                if progress:
                    progress(i + 1, replications)
    reps.sort(key=lambda r: r.rep)
    frames = to_frames(reps)
    return RunResult(scenario=scenario, seed=seed, replications=replications, frames=frames,
                     wall_s=time.perf_counter() - t0,
                     solve_s=sum(r.timing.get("solve_s", 0.0) for r in reps), workers=workers)
