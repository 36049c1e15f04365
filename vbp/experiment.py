"""Replications of a scenario, in-process or on a local process pool, with identical results.

A replication is the pure function `run_replication(scenario, seed, rep)`; results are ordered by
replication number, so the worker count never changes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import pandas as pd

from vbp.errors import SimulationError
from vbp.model import run_replication
from vbp.records import to_frames
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


def _one(args: tuple[Scenario, int, int]) -> tuple[int, dict[str, pd.DataFrame], dict[str, float]]:
    """One replication as tables: a worker sends back a few DataFrames, which pickle far faster
    than thousands of row tuples, so the parent is not the bottleneck."""
    scenario, seed, rep = args
    record = run_replication(scenario, seed, rep)
    return rep, to_frames([record]), record.timing


def run(scenario: Scenario, *, replications: int = 10, seed: int = 0, workers: int | None = None,
        progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Run `replications` replications (0..n-1) of the scenario and stack their records."""
    t0 = time.perf_counter()
    workers = min(workers or default_workers(), replications)
    tasks = [(scenario, seed, rep) for rep in range(replications)]
    parts: list[tuple[int, dict[str, pd.DataFrame], dict[str, float]]] = []
    if workers <= 1:
        for i, task in enumerate(tasks):
            parts.append(_one(task))
            if progress:
                progress(i + 1, replications)
    else:
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, replications // (8 * workers))
                for i, part in enumerate(pool.map(_one, tasks, chunksize=chunk)):
                    parts.append(part)
                    if progress:
                        progress(i + 1, replications)
        except BrokenProcessPool:
            # a worker ended without reporting (killed, out of memory, crash in native code): its
            # own error, if any, is lost, so say how to see it rather than show the pool's traceback
            raise SimulationError(
                f"a worker process died after {len(parts)} of {replications} replications "
                "(killed, out of memory, or a crash in native code); rerun, or use --workers 1 "
                "to see the error") from None
    parts.sort(key=lambda p: p[0])
    frames = {name: pd.concat([p[1][name] for p in parts], ignore_index=True) for name in parts[0][1]}
    return RunResult(scenario=scenario, seed=seed, replications=replications, frames=frames,
                     wall_s=time.perf_counter() - t0,
                     solve_s=sum(p[2].get("solve_s", 0.0) for p in parts), workers=workers)
