"""Rules vs planner: what the rulebook costs against the cost-optimal design, and the shortage risk
of each.

Both designs see the same bids, costs and supply shocks (common random numbers: the same seed and
replication numbers). In planner mode the MILP chooses each drug molecule's winners as well as the
allocation: `planner` at least cost alone (the cost-optimal design), `planner_secure` under
supply-security constraints (at least 2 winners, none above 70% of the volume, and N-1 backup
coverage: the other winners' capacity covers the demand if any one fails). Bids are those
submitted under the rulebook: the comparison holds bidding fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from vbp.counterfactual import paired_ci
from vbp.errors import InputError
from vbp.experiment import RunResult, run
from vbp.metrics import dynamics_metrics, summarize
from vbp.scenario import load_scenario

__all__ = ["DESIGNS", "DESIGN_METRICS", "design_metrics", "compare_designs", "run_designs"]

DESIGNS: dict[str, tuple[str, ...]] = {
    "rules": (),
    # the cost-optimal design: the planner with no supply-security constraint
    "planner": ("optimizer.mode=planner", "optimizer.min_suppliers=1", "optimizer.max_share=1.0",
                "optimizer.backup_coverage=false"),
    # cost-optimal under supply security: two suppliers at least, none above 70%, N-1 backup
    "planner_secure": ("optimizer.mode=planner", "optimizer.min_suppliers=2", "optimizer.max_share=0.7",
                       "optimizer.backup_coverage=true"),
}

_DESIGN_PATHS = {o.split("=", 1)[0] for sets in DESIGNS.values() for o in sets}

DESIGN_METRICS = {
    "price_ratio": "drug spend at award prices / the same agreed volume at reference prices",
    "annual_savings_bn": "official-style annual savings of the drug rounds' awards, CNY bn",
    "winners_per_molecule": "winning products per procured drug molecule",
    "hhi": "mean HHI of winners' agreed volumes per drug molecule",
    "top_share": "mean largest winner's share of a drug molecule's agreed volume",
    "shortage_share": "drug units due that nobody delivered / units due",
    "shortage_days": "days of a drug molecule's whole demand unmet (volume-equivalent), summed",
    "backup_share": "drug units delivered by backups / units due",
}


def design_metrics(frames: dict[str, pd.DataFrame], drug_rounds: Sequence[str]) -> pd.DataFrame:
    """One row per replication: the DESIGN_METRICS over the drug rounds' first awards and supply."""
    units = frames["units"]
    u = units[units["round"].isin(drug_rounds)]
    reps = np.sort(units["rep"].unique())
    g = u.groupby("rep")
    value = g["agreed_value_ref"].sum()
    savings = g["annual_savings"].sum()
    out = pd.DataFrame(index=pd.Index(reps, name="rep"))
    out["price_ratio"] = ((value - savings) / value.where(value > 0)).reindex(reps)
    out["annual_savings_bn"] = (savings / 1e9).reindex(reps)
    procured = u[u["procured"]].groupby("rep")
    out["winners_per_molecule"] = (procured["n_winners"].sum() / procured["n_winners"].count()).reindex(reps)
    dyn = dynamics_metrics(frames, list(drug_rounds))
    for col in ("hhi", "top_share", "shortage_share", "shortage_days", "backup_share"):
        out[col] = dyn[col].reindex(reps)
    return out


def compare_designs(per_design: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long table: per metric and design, the mean and 95% interval over replications and the paired
    difference from the rules with its 95% CI; first, `cost_of_rules` per planner design = the rules'
    price ratio / the design's - 1 (paired by replication)."""
    rules = per_design["rules"]
    rows = []
    for name, df in per_design.items():
        if name == "rules":
            continue
        both = rules[["price_ratio"]].merge(df[["price_ratio"]], left_index=True, right_index=True,
                                            suffixes=("", "_d"))
        mean, lo, hi, n = paired_ci((both["price_ratio"] / both["price_ratio_d"] - 1.0).to_numpy())
        rows.append({"metric": "cost_of_rules", "design": name, "mean": mean, "ci_low": lo, "ci_high": hi,
                     "diff_mean": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan, "n": n})
    for m in DESIGN_METRICS:
        for name, df in per_design.items():
            s = summarize(df[m])
            row = {"metric": m, "design": name, "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                   "diff_mean": np.nan, "diff_ci_low": np.nan, "diff_ci_high": np.nan, "n": s["n"]}
            if name != "rules":
                both = rules[[m]].merge(df[[m]], left_index=True, right_index=True, suffixes=("", "_d"))
                d, lo, hi, _ = paired_ci((both[f"{m}_d"] - both[m]).to_numpy())
                row.update(diff_mean=d, diff_ci_low=lo, diff_ci_high=hi)
            rows.append(row)
    return pd.DataFrame(rows)


def run_designs(scenario_ref: str, *, overrides: Sequence[str] = (), designs: Sequence[str] = tuple(DESIGNS),
                replications: int = 10, seed: int = 0, workers: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                ) -> tuple[dict[str, RunResult], pd.DataFrame]:
    """Run the scenario under each design (DESIGNS; "rules" always) with the same seed; return the
    runs and the comparison table."""
    fixed = [o for o in overrides if o.split("=", 1)[0].strip() in _DESIGN_PATHS]
    if fixed:
        raise InputError(f"{fixed[0]!r}: each design sets {fixed[0].split('=', 1)[0].strip()} itself "
                         "(rules, planner, planner_secure); drop it from --set", field="--set", value=fixed[0])
    names = ["rules", *dict.fromkeys(d for d in designs if d != "rules")]
    base = load_scenario(scenario_ref, list(overrides))
    if not any(r.category == "drug" for r in base.rounds):
        raise InputError("has no drug round: the planner designs apply to drug molecules only",
                         file=scenario_ref, field="rounds")
    total = len(names) * replications
    runs: dict[str, RunResult] = {}
    for i, name in enumerate(names):
        scenario = base if name == "rules" else load_scenario(scenario_ref, [*overrides, *DESIGNS[name]])
        step = None if progress is None else (lambda done, _n, off=i * replications: progress(off + done, total))
        runs[name] = run(scenario, replications=replications, seed=seed, workers=workers, progress=step)
    drugs = [r.id for r in runs["rules"].scenario.rounds if r.category == "drug"]
    table = compare_designs({k: design_metrics(r.frames, drugs) for k, r in runs.items()})
    return runs, table
