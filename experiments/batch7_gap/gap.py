"""Batch 7's average cut minus the molecule-weighted mean of batches 2-5, per design point.

Reads the results table of `vbp sweep experiments/batch7_gap/spec.toml` (or `spec_box.toml`) and
prints, for every point, the simulated gap (mean and 2.5-97.5% range over replications) beside the
published gap, both weighted by the published procured molecules of each round (seeds/targets.toml).

    python experiments/batch7_gap/gap.py <out>/results.csv
"""

from __future__ import annotations

import sys

import pandas as pd

from vbp import metrics

EARLIER = ("batch2", "batch3", "batch4", "batch5")


def _weights() -> pd.Series:
    """Published procured molecules of batches 2-5, as shares of their total."""
    t = metrics.round_targets()
    w = pd.Series({r: float(t[r]["products_won"]) for r in EARLIER})
    return w / w.sum()


def published_gap() -> float:
    """Published batch-7 cut minus the procured-molecule-weighted mean cut of batches 2-5."""
    t = metrics.round_targets()
    return t["batch7"]["avg_cut"] - sum(wr * t[r]["avg_cut"] for r, wr in _weights().items())


def param_columns(results: pd.DataFrame) -> list[str]:
    """The design's parameter columns: those between `error` and the first metric."""
    cols = list(results.columns)
    return cols[cols.index("error") + 1: cols.index("drug_avg_cut")]


def gap_table(results: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """One row per design point: its parameters, batch 7's cut, batches 2-5's and the gap (shares)."""
    w = _weights()
    ok = results[results["status"] == "ok"].copy()
    ok["earlier"] = ok[[f"avg_cut.{r}" for r in w.index]].to_numpy() @ w.to_numpy()
    ok["gap"] = ok["avg_cut.batch7"] - ok["earlier"]
    g = ok.groupby("point")
    out = g[params].first()
    out["batch7"] = g["avg_cut.batch7"].mean()
    out["batches2_5"] = g["earlier"].mean()
    out["gap"] = g["gap"].mean()
    out["gap_low"] = g["gap"].quantile(0.025)
    out["gap_high"] = g["gap"].quantile(0.975)
    out["replications"] = g["gap"].count()
    return out.reset_index()


def main(path: str) -> None:
    results = pd.read_csv(path)
    table = gap_table(results, param_columns(results))
    pd.set_option("display.width", 160)
    shown = table.copy()
    for col in ("batch7", "batches2_5", "gap", "gap_low", "gap_high"):
        shown[col] = (100 * shown[col]).round(1)
    print(shown.to_string(index=False))
    lowest = table.loc[table["gap"].idxmin()]
    print(f"published gap: {100 * published_gap():+.1f} pts; simulated mean gap over the {len(table)} points: "
          f"{100 * table['gap'].min():+.1f} to {100 * table['gap'].max():+.1f} pts (lowest at point "
          f"{int(lowest['point'])}); lowest replication range edge: {100 * table['gap_low'].min():+.1f} pts")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/batch7_gap/gap.py RESULTS.csv")
    main(sys.argv[1])
