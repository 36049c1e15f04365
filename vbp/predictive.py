"""Predictive intervals: a simulated outcome's replication spread plus the model's own error.

A replication interval says how much a round's outcome varies between simulated histories with the
parameters held fixed; it says nothing of how far the model itself is off. The leave-one-round-out
residuals measure that. A residual e_i = predicted − published mixes the round's replication
variance s_i² (the published cut is one history) with the model's structural error (parameters
refitted without the round, and whatever the model lacks), so the structural variance is estimated
by moments as mean(e_i² − s_i²), floored at zero. A forecast's predictive interval is then the
interval of (a replication's outcome + a structural error drawn from N(0, sd²)).

Pure functions; the Monte Carlo draws use their own seeded generator, so results do not depend on
worker count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["structural_sd", "predictive_interval", "loro_coverage"]

#: Normal draws per replication when mixing in the structural error.
SAMPLES = 4000


def structural_sd(errors: Sequence[float], replication_sds: Sequence[float]) -> float:
    """sqrt(max(0, mean(e_i² − s_i²))): the model error left once replication noise is removed."""
    e = np.asarray(errors, dtype=float)
    s = np.asarray(replication_sds, dtype=float)
    if e.shape != s.shape or e.size == 0:
        raise ValueError(f"need one replication sd per residual, got {e.size} residuals and {s.size} sds")
    return float(np.sqrt(max(0.0, float(np.mean(e ** 2 - s ** 2)))))


def predictive_interval(draws: Sequence[float], sd: float, *, seed: int, scale: Sequence[float] | None = None,
                        level: float = 0.95, log_sd: float = 0.0,
                        bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """Central `level` interval of (draw_r + scale_r · ε) · exp(η), ε ~ N(0, sd²), η ~ N(0, log_sd²),
    over the replications' draws, within `bounds`.

    `scale` converts the error into the statistic's units per draw (1 for the cut itself; a
    replication's savings / cut for savings, which move in proportion to the cut). `log_sd` is a
    proportional error independent of ε (the savings' error beyond the cut's: the agreed value).
    With sd = log_sd = 0 this is the replication interval. The normal error knows nothing of a
    statistic's range (a share lies in [0, 1]), so the interval is clipped to `bounds` (as clipping
    every draw would, up to the interpolation between the two draws around a percentile).
    """
    x = np.asarray(draws, dtype=float)
    ok = np.isfinite(x)
    k = np.ones_like(x) if scale is None else np.asarray(scale, dtype=float)
    ok &= np.isfinite(k)
    x, k = x[ok], k[ok]
    if x.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    if sd <= 0 and log_sd <= 0:
        y = x
    else:
        rng = np.random.default_rng(seed)
        y = x[:, None] + k[:, None] * (rng.standard_normal((x.size, SAMPLES)) * sd if sd > 0 else 0.0)
        if log_sd > 0:
            y = y * np.exp(rng.standard_normal((x.size, SAMPLES)) * log_sd)
    lo, hi = np.clip(np.percentile(y, [tail, 100 - tail]), *bounds)
    return float(lo), float(hi)


def loro_coverage(rows: Sequence[Mapping], draws: Mapping[str, Sequence[float]], *, seed: int) -> list[dict]:
    """Out-of-sample check of the predictive intervals, one row per left-out round.

    For round i the interval is centred on its leave-one-round-out prediction, carries the round's
    own replication spread (its simulated draws, recentred) and a structural sd estimated from the
    *other* rounds' residuals only, so the round's published value plays no part in its interval.
    """
    ids = [r["round"] for r in rows]
    missing = [i for i in ids if i not in draws or len(draws[i]) < 2]
    if missing:
        raise ValueError(f"need at least two simulated draws for rounds {missing}")
    errs = {r["round"]: float(r["predicted"]) - float(r["published"]) for r in rows}
    sds = {i: float(np.std(np.asarray(draws[i], dtype=float), ddof=1)) for i in ids}
    out = []
    for r in rows:
        i = r["round"]
        others = [j for j in ids if j != i]
        sd_i = structural_sd([errs[j] for j in others], [sds[j] for j in others]) if others else 0.0
        x = np.asarray(draws[i], dtype=float)
        lo, hi = predictive_interval(x - x.mean() + float(r["predicted"]), sd_i, seed=seed)
        out.append({"round": i, "published": float(r["published"]), "predicted": float(r["predicted"]),
                    "replication_sd": sds[i], "structural_sd_without_round": sd_i,
                    "pi_low": lo, "pi_high": hi, "covered": bool(lo <= float(r["published"]) <= hi)})
    return out
