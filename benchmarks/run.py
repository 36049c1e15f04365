"""Performance of one national-history replication, measured in one process so ratios hold.

Usage: python benchmarks/run.py [--json] [--planner] [--reps N]

Bid functions are solved once and cached (memory and disk); the warm-up that fills the cache is
reported separately (`warmup_s`) and the timed runs are warm, as in any sweep after its first
replications. Figures:
  replication_s    median wall time of one replication with exact optimization
  no_optimizer_s   the same with the allocation replaced by the rulebook's draft (no optimizer)
  ratio            replication_s / no_optimizer_s
  milp_share       share of replication time spent building and solving allocation models
  reps_per_min_1w  throughput with 1 worker process; reps_per_min_2w with 2
  scaling          time at 1x, 2x, 4x molecules and bidders per molecule, and the fitted exponent
                   of time against molecules x bidders
  dynamics         national-history-dynamics (re-tenders, exit and entry, supply winner by winner):
                   its median replication time and the ratio to replication_s
  adaptive         national-history with adaptive (learning) bidders: replication time and ratio
  bid_functions    cold solves of every bid function one replication needs, by the focal fast
                   path (rules.focal_fractions) and by the stacked award_fractions call it
                   replaces: count, seconds, speedup, in all and by rule kind. Cold solves are
                   what a calibration spends most of its time on.
  cold_pool        2 replications from an empty bid-function cache in a pool of 2 worker
                   processes, with one BLAS thread per worker (what vbp's pools use,
                   executors.single_threaded_blas) and with the BLAS default: seconds and ratio.
                   Cold solves in parallel workers are how calibrations and sweeps run.
  peak_rss_mb      peak resident memory of this process
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from vbp import strategies
from vbp.executors import single_threaded_blas
from vbp.experiment import run
from vbp.model import run_replication
from vbp.scenario import load_scenario

SCENARIO = "national-history"


def timed_reps(scenario, reps: int, seed: int = 1) -> tuple[list[float], float]:
    """Wall times of replications 0..reps-1 and the total allocation solve time."""
    walls, solve = [], 0.0
    for r in range(reps):
        t0 = time.perf_counter()
        rec = run_replication(scenario, seed, r)
        walls.append(time.perf_counter() - t0)
        solve += rec.timing["solve_s"]
    return walls, solve


def throughput(scenario, workers: int, reps: int) -> float:
    t0 = time.perf_counter()
    run(scenario, replications=reps, seed=1, workers=workers)
    return 60.0 * reps / (time.perf_counter() - t0)


def scaled(factor: int, extra: tuple[str, ...] = ()) -> object:
    """national-history with `factor` x molecules and `factor` x bidders per molecule."""
    base = load_scenario(SCENARIO, extra)
    sets = list(extra)
    for r in base.rounds:
        if r.category != "drug":
            continue
        sets.append(f"rounds.{r.id}.molecules={r.molecules * factor}")
        sets.append(f"rounds.{r.id}.market_value_bn={r.market_value_bn * factor}")
        if r.bidding_products is not None:
            sets.append(f"rounds.{r.id}.bidding_products={r.bidding_products * factor * factor}")
        if r.bidding_firms is not None:
            sets.append(f"rounds.{r.id}.bidding_firms={r.bidding_firms * factor * factor}")
    sets.append(f"agents.firm_pool={base.agents.firm_pool * factor * factor}")
    return load_scenario(SCENARIO, sets)


def measure(reps: int, extra: tuple[str, ...] = ()) -> dict:
    exact = load_scenario(SCENARIO, extra)
    t0 = time.perf_counter()
    timed_reps(exact, reps)  # warm-up: solve and cache every bid function these replications need
    warmup = time.perf_counter() - t0
    walls, solve = timed_reps(exact, reps)
    floor = load_scenario(SCENARIO, (*extra, "optimizer.method=draft"))
    timed_reps(floor, reps)
    floor_walls, _ = timed_reps(floor, reps)
    out = {
        "warmup_s": round(warmup, 2),
        "replication_s": round(statistics.median(walls), 4),
        "no_optimizer_s": round(statistics.median(floor_walls), 4),
    }
    out["ratio"] = round(out["replication_s"] / out["no_optimizer_s"], 3)
    out["milp_share"] = round(solve / sum(walls), 4)
    return out


def bid_functions() -> dict:
    """Cold solves of every bid function of one replication, both ways, in this run, by rule kind."""
    solve, recorded = strategies._solve, []

    def record(ctx, eq):
        recorded.append((ctx, eq))
        return solve(ctx, eq)

    before = os.environ.get("VBP_CACHE_DIR")
    os.environ["VBP_CACHE_DIR"] = "off"  # every bid function is solved, none read from disk
    strategies._solve = record
    strategies.clear_cache()
    try:
        run_replication(load_scenario(SCENARIO), 1, 0)
    finally:
        strategies._solve = solve
        if before is None:
            os.environ.pop("VBP_CACHE_DIR")
        else:
            os.environ["VBP_CACHE_DIR"] = before

    def seconds(focal: bool) -> dict[str, float]:
        out: dict[str, float] = {}
        for ctx, eq in recorded:
            t0 = time.perf_counter()
            solve(ctx if focal else dataclasses.replace(ctx, focal_fn=None), eq)
            kind = ctx.award_key[0].kind
            out[kind] = out.get(kind, 0.0) + time.perf_counter() - t0
        return out

    fast, stacked = seconds(True), seconds(False)
    kinds = {kind: {"count": sum(ctx.award_key[0].kind == kind for ctx, _ in recorded),
                    "focal_s": round(fast[kind], 2), "stacked_s": round(stacked[kind], 2),
                    "speedup": round(stacked[kind] / fast[kind], 2)} for kind in fast}
    total_fast, total_stacked = sum(fast.values()), sum(stacked.values())
    return {"count": len(recorded), "focal_s": round(total_fast, 2), "stacked_s": round(total_stacked, 2),
            "speedup": round(total_stacked / total_fast, 2), "by_kind": kinds}


def _replication(task: tuple) -> int:
    scenario, seed, rep = task
    return len(run_replication(scenario, seed, rep).bids)


def cold_pool(reps: int = 2) -> dict:
    """Cold replications in a 2-worker pool: one BLAS thread per worker against the BLAS default."""
    scenario = load_scenario(SCENARIO)
    before = os.environ.get("VBP_CACHE_DIR")
    out = {}
    try:
        for key, init in (("one_blas_thread_s", single_threaded_blas), ("blas_default_s", None)):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["VBP_CACHE_DIR"] = cache  # every bid function is solved afresh,
                strategies.clear_cache()  # none inherited from this process's memory by forked workers
                t0 = time.perf_counter()
                with ProcessPoolExecutor(max_workers=2, initializer=init) as pool:
                    list(pool.map(_replication, [(scenario, 1, r) for r in range(reps)]))
                out[key] = round(time.perf_counter() - t0, 2)
    finally:
        if before is None:
            os.environ.pop("VBP_CACHE_DIR", None)
        else:
            os.environ["VBP_CACHE_DIR"] = before
    out["replications"] = reps
    out["ratio"] = round(out["blas_default_s"] / out["one_blas_thread_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--planner", action="store_true", help="also measure the planner mode")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()

    res = measure(args.reps)
    scen = load_scenario(SCENARIO)
    res["reps_per_min_1w"] = round(throughput(scen, 1, 4 * args.reps), 1)
    res["reps_per_min_2w"] = round(throughput(scen, 2, 4 * args.reps), 1)
    res["speedup_2w"] = round(res["reps_per_min_2w"] / res["reps_per_min_1w"], 2)
    points = []
    for f in (1, 2, 4):
        s = scaled(f)
        timed_reps(s, 2)
        walls, _ = timed_reps(s, 3)
        # molecules x bidders per molecule = the number of bids in a replication
        size = len(run_replication(s, 1, 0).bids)
        points.append({"factor": f, "bids": size, "replication_s": round(statistics.median(walls), 4)})
    x = np.log([p["bids"] for p in points])
    y = np.log([p["replication_s"] for p in points])
    res["scaling"] = {"points": points, "exponent": round(float(np.polyfit(x, y, 1)[0]), 3)}
    for key, name, sets in (("dynamics", "national-history-dynamics", ()),
                             ("adaptive", SCENARIO, ("agents.strategy=adaptive",))):
        s = load_scenario(name, sets)
        timed_reps(s, args.reps)  # warm-up: re-tenders need bid functions of their own
        walls, _ = timed_reps(s, args.reps)
        t = statistics.median(walls)
        res[key] = {"replication_s": round(t, 4), "ratio": round(t / res["replication_s"], 2)}
    res["bid_functions"] = bid_functions()
    res["cold_pool"] = cold_pool()
    if args.planner:
        res["planner"] = measure(max(3, args.reps // 2), ("optimizer.mode=planner",))
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        for k, v in res.items():
            print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
