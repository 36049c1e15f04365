"""How do bids evolve from the pilot to batch 7 under adaptive bidders, next to the fixed-markup
(cost_plus) and equilibrium strategies?

Runs the national history under each strategy with the same seed (common random numbers: the same
firms, costs and molecules), then writes per strategy and drug round the mean margin share kept
(bid - reserve) / (ceiling - reserve), the mean bid / reference price and the average cut, each with
a 95% interval over replications, as bid_evolution.csv, and draws bid_evolution.png.

    python experiments/bid_evolution/run.py --out results/bid_evolution -n 10
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from vbp import metrics
from vbp.experiment import run
from vbp.scenario import load_scenario

STRATEGIES = ("cost_plus", "equilibrium", "adaptive")
STATS = ("margin_share", "winning_margin_share", "bid_to_ref", "avg_cut")


def evolution(replications: int, seed: int, workers: int | None) -> pd.DataFrame:
    rows = []
    for strategy in STRATEGIES:
        scenario = load_scenario("national-history", [f"agents.strategy={strategy}"])
        drug = [r.id for r in scenario.rounds if r.category == "drug"]
        result = run(scenario, replications=replications, seed=seed, workers=workers)
        m = metrics.bid_margins(result.frames["bids"]).merge(
            metrics.round_metrics(result.frames["units"], result.frames["bids"])[["rep", "round", "avg_cut"]],
            on=["rep", "round"])
        for rid in drug:
            sub = m[m["round"] == rid]
            row = {"strategy": strategy, "round": rid}
            for stat in STATS:
                s = metrics.summarize(sub[stat])
                row |= {stat: s["mean"], f"{stat}_ci_low": s["ci_low"], f"{stat}_ci_high": s["ci_high"]}
            rows.append(row)
    return pd.DataFrame(rows)


def draw(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from vbp.style import context

    with context():
        _draw(table, path, plt)


def _draw(table: pd.DataFrame, path: Path, plt) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for strategy, sub in table.groupby("strategy", sort=False):
        x = range(len(sub))
        for ax, stat in zip(axes, ("margin_share", "avg_cut")):
            ax.plot(x, sub[stat], marker="o", label=strategy)
            ax.fill_between(x, sub[f"{stat}_ci_low"], sub[f"{stat}_ci_high"], alpha=0.2)
        axes[0].set_xticks(list(x), sub["round"], rotation=30)
        axes[1].set_xticks(list(x), sub["round"], rotation=30)
    axes[0].set_ylabel("margin share kept (0 = reserve, 1 = ceiling)")
    axes[1].set_ylabel("average cut")
    axes[0].legend()
    fig.suptitle("Bids from the pilot to batch 7 by bidding strategy (mean, 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bid_evolution")
    ap.add_argument("-n", "--replications", type=int, default=10)
    ap.add_argument("--seed", type=int, default=20181206)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = evolution(args.replications, args.seed, args.workers)
    table.to_csv(out / "bid_evolution.csv", index=False)
    draw(table, out / "bid_evolution.png")
    cols = ["strategy", "round", "margin_share", "bid_to_ref", "avg_cut"]
    print(table[cols].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
