"""Replications of a scenario, in-process or on a local process pool, with identical results.

A replication is the pure function `run_replication(scenario, seed, rep)`; results are ordered by
replication number, so the worker count never changes them. Replications saved by an earlier run
can be handed back in (`saved`) and are not run again; each new one is passed to `on_part` as soon
as it finishes, so a caller can store it before the next one arrives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

from vbp.errors import SimulationError
from vbp.model import run_replication
from vbp.records import to_frames
from vbp.scenario import Scenario

__all__ = ["Part", "RunResult", "run", "default_workers"]


class Part(NamedTuple):
    """One finished replication: its number, its tables (as `records.to_frames` names them), and
    its timings in seconds (e.g. `solve_s`)."""

    rep: int
    frames: dict[str, pd.DataFrame]
    timing: dict[str, float]


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
    reused: int = 0  # replications taken from `saved` rather than run


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _one(args: tuple[Scenario, int, int]) -> Part:
    """One replication as tables: a worker sends back a few DataFrames, which pickle far faster
    than thousands of row tuples, so the parent is not the bottleneck."""
    scenario, seed, rep = args
    record = run_replication(scenario, seed, rep)
    return Part(rep, to_frames([record]), record.timing)


def run(scenario: Scenario, *, replications: int = 10, seed: int = 0, workers: int | None = None,
        progress: Callable[[int, int], None] | None = None, saved: Iterable[tuple] = (),
        on_part: Callable[[Part], None] | None = None) -> RunResult:
    """Run replications 0..n-1 of the scenario and stack their records in replication order.

    `saved` parts (rep, frames, timing) of the same scenario and seed are reused instead of run;
    `on_part` receives each new part as it finishes (in completion order); `progress(done, n)`
    counts reused and new replications alike.
    """
    t0 = time.perf_counter()
    parts = {p[0]: Part(*p) for p in saved if 0 <= p[0] < replications}
    reused = len(parts)
    todo = [rep for rep in range(replications) if rep not in parts]
    workers = max(1, min(workers or default_workers(), len(todo)))

    def finished(part: Part) -> None:
        parts[part.rep] = part
        if on_part:
            on_part(part)
        if progress:
            progress(len(parts), replications)

    if progress:
        progress(len(parts), replications)
    if workers <= 1:
        for rep in todo:
            finished(_one((scenario, seed, rep)))
    else:
        try:
            _in_pool(scenario, seed, todo, workers, finished)
        except BrokenProcessPool:
            # a worker ended without reporting (killed, out of memory, crash in native code): its
            # own error, if any, is lost, so say how to see it rather than show the pool's traceback
            raise SimulationError(
                f"a worker process died after {len(parts)} of {replications} replications "
                "(killed, out of memory, or a crash in native code); rerun, or use --workers 1 "
                "to see the error") from None
    ordered = [parts[rep] for rep in range(replications)]
    frames = {name: pd.concat([p.frames[name] for p in ordered], ignore_index=True) for name in ordered[0].frames}
    return RunResult(scenario=scenario, seed=seed, replications=replications, frames=frames,
                     wall_s=time.perf_counter() - t0,
                     solve_s=sum(p.timing.get("solve_s", 0.0) for p in ordered), workers=workers,
                     reused=reused)


def _in_pool(scenario: Scenario, seed: int, reps: list[int], workers: int,
             finished: Callable[[Part], None]) -> None:
    """Run `reps` on a local process pool, at most two per worker in flight, handing each result
    to `finished` as it arrives. A failing replication, or `finished` raising, stops the pool."""
    from vbp.executors import open_executor, wait_any  # executors imports this module

    queue = iter(reps)
    with open_executor(workers) as backend:
        flight: dict[Future, int] = {}

        def fill() -> None:
            while len(flight) < 2 * workers:
                rep = next(queue, None)
                if rep is None:
                    return
                flight[backend.executor.submit(_one, (scenario, seed, rep))] = rep

        fill()
        while flight:
            done = wait_any(backend.executor, flight)
            for fut in sorted(done, key=flight.__getitem__):
                del flight[fut]
                finished(fut.result())
            fill()
