"""Two calibrations side by side: their fit, their out-of-sample record, and the national history
simulated at each one's parameters (with the settings it was fitted under).

Written for `market.bidder_count` (a drug round's bidding counts taken as entrants, or as bids),
but any two files written by `vbp calibrate` compare the same way:

    vbp calibrate --set market.bidder_count=bids --out calibration-bids.toml
    python experiments/bidder_count/compare.py seeds/calibration.toml calibration-bids.toml -n 20

Everything printed comes from the two files and from simulations of their parameters; published
values are the targets in seeds/targets.toml.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from vbp import metrics
from vbp.experiment import run
from vbp.scenario import load_scenario

DRUG_ROUNDS = ["pilot", "expansion", "batch2", "batch3", "batch4", "batch5", "batch7"]


def read(path: str | Path) -> dict:
    return tomllib.loads(Path(path).read_text(encoding="utf-8"))


def record(doc: dict) -> dict[str, float]:
    """The file's own figures: drug objective, in-sample moment errors, out-of-sample errors."""
    fit = doc["fit"]["drug"]
    cuts = [m for m in fit["moments"] if m["name"].endswith(".avg_cut")]
    shares = [m for m in fit["moments"] if m["name"].endswith(".winner_share")]
    me = doc.get("model_error", {})
    loro_share = doc.get("loro_winner_share", [])
    rolling = [r for r in doc.get("rolling", []) if r.get("stat", "avg_cut") == "avg_cut"]
    return {
        "drug objective": fit["objective"],
        "in-sample cut MAE, pts (fit's replications)": 100 * np.mean([abs(m["error"]) for m in cuts]),
        "in-sample winner share MAE, pts": 100 * np.mean([abs(m["error"]) for m in shares]),
        "LORO cut MAE, pts": 100 * np.mean([abs(r["error"]) for r in doc["loro"]]),
        "LORO cuts covered": me.get("covered", np.nan),
        "LORO cut structural sd, pts": 100 * me.get("avg_cut_sd", np.nan),
        "LORO winner share MAE, pts": 100 * np.mean([abs(r["error"]) for r in loro_share]) if loro_share else np.nan,
        "LORO winner shares covered": me.get("winner_share", {}).get("covered", np.nan),
        "rolling-origin cut MAE, pts": 100 * np.mean([abs(r["error"]) for r in rolling]) if rolling else np.nan,
    }


def simulate(doc: dict, replications: int, seed: int, workers: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The national history at the file's parameters: per drug round, simulated mean beside the
    published value of the average cut (%), winner share (%) and winning products; and the
    headline targets (cuts in %, savings in CNY bn)."""
    sets = [f"{k}={v}" for k, v in doc["parameters"].items()]
    scenario = load_scenario("national-history", sets, calibrated=False)
    result = run(scenario, replications=replications, seed=seed, workers=workers)
    rm = metrics.round_metrics(result.frames["units"], result.frames["bids"]).groupby("round").mean(numeric_only=True)
    pub = metrics.round_targets()
    # the published winner shares are the calibration's moments (winning firms / bidding firms)
    shares = {m["name"].split(".")[0]: m["published"] for m in doc["fit"]["drug"]["moments"]
              if m["name"].endswith(".winner_share")}
    rows = {}
    for rid in DRUG_ROUNDS:
        p = pub.get(rid, {})
        share = shares.get(rid, np.nan)
        rows[rid] = {"cut": 100 * rm.loc[rid, "avg_cut"], "cut [pub]": 100 * p.get("avg_cut", np.nan),
                     "winner share": 100 * rm.loc[rid, "winner_share"], "share [pub]": 100 * share,
                     "winning products": rm.loc[rid, "winning_products"],
                     "products [pub]": p.get("winning_products", np.nan)}
    head, _ = metrics.compare(result.frames)
    headline = pd.DataFrame({r["name"]: {"simulated": r["mean"] * (1 if r["name"].endswith("_bn") else 100),
                                         "published": r["published"] * (1 if r["name"].endswith("_bn") else 100)}
                             for r in head}).T
    return pd.DataFrame(rows).T, headline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs=2, help="two calibration files written by vbp calibrate")
    ap.add_argument("-n", "--replications", type=int, default=20)
    ap.add_argument("--seed", type=int, default=20181206)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    docs = [read(f) for f in args.files]
    names = [Path(f).name for f in args.files]
    pd.set_option("display.width", 160)
    print(pd.DataFrame({n: record(d) for n, d in zip(names, docs)}).round(2).to_string())
    for n, d in zip(names, docs):
        fixed = d["meta"].get("fixed", [])
        print(f"\n{n}: fitted under {', '.join(fixed) or 'the defaults'}; {args.replications} replications, "
              f"seed {args.seed}")
        drugs, headline = simulate(d, args.replications, args.seed, args.workers)
        print(drugs.round(1).to_string())
        print(headline.round(1).to_string())
        print(f"drug cut MAE {np.mean(np.abs(drugs['cut'] - drugs['cut [pub]'])):.1f} pts; winner share MAE "
              f"{np.nanmean(np.abs(drugs['winner share'] - drugs['share [pub]'])):.1f} pts over the rounds "
              "that publish it")


if __name__ == "__main__":
    main()
