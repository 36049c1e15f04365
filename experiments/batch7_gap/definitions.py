"""A round's average cut under three averaging rules, from the bids of a run folder (`--out DIR`).

The published cuts do not say how they average (vbp_facts.md, Definitions, gives only their
bases). vbp averages over molecules (each molecule the mean of its winning products); pooling all
winning products, or weighting them by agreed volume, are the two other readings. Each is measured
against the round's own cut base, as the model's metric is.

    vbp reproduce -n 20 --out R && python experiments/batch7_gap/definitions.py R
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pandas as pd

from vbp import metrics


def cut_definitions(bids: pd.DataFrame, cut_base: dict[str, str]) -> pd.DataFrame:
    """Per round, the mean over replications of the molecule-averaged, product-pooled and
    volume-weighted cut (shares), each winning product's cut taken against the round's base."""
    won = bids[bids["won"]].copy()
    base = won["round"].map(cut_base).fillna("reference")
    won["cut"] = 1.0 - won["price"] / won["ref_price"].where(base == "reference", won["ceiling"])
    won["weighted"] = won["cut"] * won["agreed_units"]
    by_rep = won.groupby(["round", "rep"])
    molecule = won.groupby(["round", "rep", "unit"])["cut"].mean().groupby(["round", "rep"]).mean()
    pooled = by_rep["cut"].mean()
    volume = by_rep["weighted"].sum() / by_rep["agreed_units"].sum()
    table = pd.DataFrame({"molecules": molecule, "products": pooled, "volume": volume})
    return table.groupby("round").mean()


def run_cut_bases(folder: str | Path) -> dict[str, str]:
    """Each round's cut base in the run's own scenario, as written beside its tables (so a base
    changed with `--set` is kept)."""
    rounds = tomllib.loads((Path(folder) / "scenario.toml").read_text(encoding="utf-8"))["rounds"]
    return {r["id"]: r.get("cut_base", "reference") for r in rounds}


def main(folder: str) -> None:
    bids = pd.read_parquet(Path(folder) / "bids.parquet")
    table = cut_definitions(bids, run_cut_bases(folder))
    table.insert(0, "published", pd.Series({k: v.get("avg_cut") for k, v in metrics.round_targets().items()}))
    print((100 * table).round(1).to_string())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python experiments/batch7_gap/definitions.py OUT_DIR")
    main(sys.argv[1])
