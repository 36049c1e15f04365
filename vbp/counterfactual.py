"""Counterfactual policy variants and their paired comparison with the baseline.

A variant is a list of dotted-path overrides of the resolved scenario (a copy, never a mutation).
Replication r of every variant runs `run_replication(scenario, seed, r)` with the same seed, so the
firms, costs, molecules and demand are the same draws in the baseline and in the variant (common
random numbers); only the rules differ. The effect of a variant is then the mean of the paired
differences over replications, with a t interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["VARIANTS", "BASELINE", "variant_overrides", "paired_ci", "paired_differences",
           "COLUMNS"]

BASELINE = "baseline"

VARIANTS: dict[str, str] = {
    "single_winner": "every multi-winner drug round awarded to one winner (rules.max_winners_cap = 1)",
    "no_50pct_route": "no 50%-below-ceiling route to winning (rules.safe_harbour = false)",
    "volume_share_plus10": "each guaranteed volume share +0.10, capped at 1, in every multi-winner rulebook",
    "batch11_anchor": "batch-11 gate anchor in every multi-winner drug rulebook (anchor_mean_factor = 0.5)",
}

COLUMNS = ["metric", "variant", "baseline_mean", "variant_mean", "diff_mean", "diff_ci_low",
           "diff_ci_high", "n"]

_SHARE_LEVERS = ("volume_share_1", "volume_share_2", "volume_share_3", "volume_share_4plus")


def variant_overrides(name: str, raw: dict) -> list[tuple[str, Any]]:
    """The dotted-path overrides that turn the resolved scenario `raw` into variant `name`."""
    if name == BASELINE:
        return []
    if name == "single_winner":
        return [("rules.max_winners_cap", 1)]
    if name == "no_50pct_route":
        return [("rules.safe_harbour", False)]
    if name == "batch11_anchor":
        return [("rules.anchor_mean_factor", 0.5)]
    if name == "volume_share_plus10":
        return _shares_plus(raw, 0.10)
    raise KeyError(name)


def _shares_plus(raw: dict, step: float) -> list[tuple[str, Any]]:
    """+step on every multi-winner rulebook's volume-share table and on any set share lever."""
    out: list[tuple[str, Any]] = []
    for name, rb in raw.get("rulebooks", {}).items():
        if rb.get("kind") == "multi_winner":
            out.append((f"rulebooks.{name}.volume_shares", [_plus(v, step) for v in rb["volume_shares"]]))
    for lever in _SHARE_LEVERS:
        value = raw.get("rules", {}).get(lever)
        if value is not None:  # a global lever replaces the tables, so it moves too
            out.append((f"rules.{lever}", _plus(value, step)))
    return out


def _plus(v: float, step: float) -> float:
    return round(min(1.0, float(v) + step), 12)


def paired_ci(diffs: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of paired differences: mean +- t_{(1+level)/2, n-1} x sd / sqrt(n).

    Non-finite differences are dropped; with fewer than two the interval is undefined (nan).
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(d.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def paired_differences(results: pd.DataFrame, metrics: Sequence[str], *, by: str = "variant",
                       baseline: str = BASELINE, level: float = 0.95) -> pd.DataFrame:
    """Per metric and variant: means over the replications both ran successfully, and the paired CI.

    `results` has one row per (variant, rep) with columns `by`, `rep`, `status` and the metrics.
    Baseline and variant means are over the same paired replications, so
    diff_mean = variant_mean - baseline_mean.
    """
    ok = results[results["status"] == "ok"]
    base = ok[ok[by] == baseline].set_index("rep")
    rows = []
    for metric in metrics:
        for variant in dict.fromkeys(ok[by]):
            if variant == baseline:
                continue
            other = ok[ok[by] == variant].set_index("rep")
            both = base[[metric]].merge(other[[metric]], how="inner", left_index=True, right_index=True,
                                        suffixes=("_b", "_v"))
            b, v = both[f"{metric}_b"].to_numpy(float), both[f"{metric}_v"].to_numpy(float)
            keep = np.isfinite(b) & np.isfinite(v)
            if not keep.any():
                continue
            mean, lo, hi, n = paired_ci(v[keep] - b[keep], level)
            rows.append({"metric": metric, "variant": variant, "baseline_mean": float(b[keep].mean()),
                         "variant_mean": float(v[keep].mean()), "diff_mean": mean, "diff_ci_low": lo,
                         "diff_ci_high": hi, "n": n})
    return pd.DataFrame(rows, columns=COLUMNS)
