"""Metrics as pure functions of the output tables, defined as the published figures define them.

- A molecule's cut is the mean over its winning products of 1 - award price / reference price; a
  round's average cut is the mean over its procured molecules (or device units). The reference is
  the pre-VBP price of the round's base (vbp_facts.md, Definitions); for insulin it is the ceiling.
- `drug_avg_cut` pools the molecules of the rounds named by the target (the 157 drugs of the pilot
  and batches 2-4), so rounds weigh by their molecule counts, as the published 53% does.
- Official "annual savings" = (reference - price) x agreed first-year volume; realised cumulative
  savings = (reference - price) x actual purchases, month by month, up to a date. They are kept apart.
- Intervals are the 2.5th-97.5th percentiles over replications: the spread of simulated histories
  that a published figure is compared against.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vbp import data

__all__ = [
    "round_metrics", "headline_metrics", "cumulative_savings", "savings_path", "summarize",
    "Target", "targets", "compare", "round_targets", "savings_checkpoints", "ROUND_METRIC_COLUMNS",
    "dynamics_metrics", "DYNAMICS_METRIC_COLUMNS", "renewal_prices", "bid_margins",
]


ROUND_METRIC_COLUMNS = {
    "rep": "replication number",
    "round": "round id",
    "avg_cut": "mean over procured units of the unit's cut (share in [0, 1])",
    "max_cut": "largest cut of any winning product (share)",
    "units": "molecules or device units listed",
    "procured": "units with at least one winner",
    "winning_products": "winning products (bids)",
    "annual_savings_bn": "official-style annual savings: (reference - price) x agreed first-year volume, CNY bn",
    "agreed_value_bn": "agreed first-year volume at reference prices, CNY bn",
    "bidding_products": "valid and invalid bids submitted (products)",
    "bidding_firms": "distinct firms that bid",
    "winning_firms": "distinct firms with at least one winning product",
    "winner_share": "winning firms / bidding firms",
    "winners_per_unit": "winning products per procured unit",
}


def round_metrics(units: pd.DataFrame, bids: pd.DataFrame) -> pd.DataFrame:
    """One row per (rep, round): cuts, procured units, winners, winner share, annual savings."""
    g = units.groupby(["rep", "round"], sort=False)
    out = pd.DataFrame({
        "avg_cut": g["cut"].mean(),
        "max_cut": g["max_cut"].max(),
        "units": g["unit"].count(),
        "procured": g["procured"].sum(),
        "winning_products": g["n_winners"].sum(),
        "annual_savings_bn": g["annual_savings"].sum() / 1e9,
        "agreed_value_bn": g["agreed_value_ref"].sum() / 1e9,
    })
    b = bids[np.isfinite(bids["bid"])]
    bg = b.groupby(["rep", "round"], sort=False)
    out["bidding_products"] = bg["bid"].count()
    out["bidding_firms"] = bg["firm"].nunique()
    out["winning_firms"] = b[b["won"]].groupby(["rep", "round"], sort=False)["firm"].nunique()
    out["winning_firms"] = out["winning_firms"].fillna(0).astype(int)
    out["winner_share"] = out["winning_firms"] / out["bidding_firms"]
    out["winners_per_unit"] = out["winning_products"] / out["procured"].where(out["procured"] > 0)
    return out.reset_index()


def cumulative_savings(deliveries: pd.DataFrame, date: dt.date | str) -> pd.Series:
    """Realised savings to the end of `date`'s month, CNY bn, per replication."""
    date = pd.Timestamp(date)
    months = pd.to_datetime(deliveries["month"])
    # a month counts when it has ended by `date` (monthly resolution)
    done = (months + pd.offsets.MonthEnd(0)) <= date
    s = deliveries[done].groupby("rep")["savings"].sum() / 1e9
    reps = deliveries["rep"].unique()
    return s.reindex(reps, fill_value=0.0)


def savings_path(deliveries: pd.DataFrame) -> pd.DataFrame:
    """Cumulative realised savings by month and replication, CNY bn (columns rep, month, savings_bn)."""
    m = deliveries.groupby(["rep", "month"], sort=True)["savings"].sum().groupby(level=0).cumsum() / 1e9
    return m.rename("savings_bn").reset_index()


@dataclass(frozen=True)
class Target:
    """A published outcome the model is compared with (from seeds/targets.toml)."""

    name: str
    value: float
    tolerance: float
    relative: bool
    description: str
    rounds: tuple[str, ...]
    date: str | None
    source: str


def targets() -> list[Target]:
    """The headline targets."""
    table = data.read_toml("targets.toml")["headline"]
    return [Target(name=k, value=float(v["value"]), tolerance=float(v["tolerance"]),
                   relative=bool(v.get("relative", False)), description=v["description"],
                   rounds=tuple(v.get("rounds", ())), date=v.get("date"), source=v["source"])
            for k, v in table.items()]


def round_targets() -> dict[str, dict]:
    """Published per-round outcomes keyed by round id."""
    return data.read_toml("targets.toml")["rounds"]


def headline_metrics(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per replication, one column per headline target that the simulated rounds allow."""
    units, deliveries = frames["units"], frames["deliveries"]
    reps = np.sort(units["rep"].unique())
    out = pd.DataFrame(index=pd.Index(reps, name="rep"))
    present = set(units["round"])
    for t in targets():
        if t.rounds:
            if not set(t.rounds) <= present:
                continue
            sel = units[units["round"].isin(t.rounds) & units["procured"]]
            out[t.name] = sel.groupby("rep")["cut"].mean().reindex(reps)
        elif t.date is not None and len(deliveries):
            out[t.name] = cumulative_savings(deliveries, t.date).reindex(reps).to_numpy()
    return out


def summarize(values: pd.Series | np.ndarray) -> dict[str, float]:
    """Mean and 95% interval (2.5th-97.5th percentile over replications)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    lo, hi = np.percentile(x, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(len(x))}


def compare(frames: dict[str, pd.DataFrame], rm: pd.DataFrame | None = None,
            head: pd.DataFrame | None = None) -> tuple[list[dict], list[dict]]:
    """(headline rows, per-round rows): published beside simulated mean and interval (`rm` and
    `head`: the frames' `round_metrics` and `headline_metrics`, if already computed)."""
    if head is None:
        head = headline_metrics(frames)
    rows = []
    for t in targets():
        if t.name not in head:
            continue
        s = summarize(head[t.name])
        tol = t.tolerance * (abs(t.value) if t.relative else 1.0)
        rows.append({"name": t.name, "published": t.value, "mean": s["mean"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "tolerance": tol,
                     "ok": bool(np.isfinite(s["mean"]) and abs(s["mean"] - t.value) <= tol),
                     "description": t.description})
    if rm is None:
        rm = round_metrics(frames["units"], frames["bids"])
    published = round_targets()
    per_round = []
    for rid in dict.fromkeys(rm["round"]):
        sub = rm[rm["round"] == rid]
        pub = published.get(rid, {})
        row = {"round": rid, "published_avg_cut": pub.get("avg_cut")}
        for col in ("avg_cut", "max_cut", "winning_products", "winning_firms", "winner_share",
                    "annual_savings_bn", "procured"):
            s = summarize(sub[col])
            row[col] = s["mean"]
            row[col + "_ci"] = (s["ci_low"], s["ci_high"])
        for col in ("winning_products", "winning_firms", "annual_savings_bn", "max_cut"):
            row["published_" + col] = pub.get(col)
        per_round.append(row)
    return rows, per_round


def savings_groups(rm: pd.DataFrame) -> list[dict]:
    """Published first-year savings of groups of rounds (targets.toml `annual_savings_groups`, e.g.
    the first batch's pilot and expansion together) beside the simulated sum over the group's rounds,
    from a run's `round_metrics`."""
    rows = []
    for g in data.read_toml("targets.toml").get("annual_savings_groups", []):
        if not set(g["rounds"]) <= set(rm["round"]):
            continue
        per_rep = rm[rm["round"].isin(g["rounds"])].groupby("rep")["annual_savings_bn"].sum()
        s = summarize(per_rep)
        rows.append({"name": g["name"], "rounds": list(g["rounds"]), "published": float(g["value"]),
                     "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                     "error_pct": 100 * (s["mean"] - g["value"]) / g["value"]})
    return rows


def savings_checkpoints(deliveries: pd.DataFrame) -> list[dict]:
    """Simulated realised savings at the dates of the official cumulative statements (not fitted)."""
    points = data.read_toml("targets.toml")["savings_path"]["points"]
    rows = []
    for p in points:
        s = summarize(cumulative_savings(deliveries, p["date"]))
        rows.append({"date": str(p["date"]), "published": float(p["value"]), "scope": p["scope"],
                     "mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                     "error_pct": 100 * (s["mean"] - p["value"]) / p["value"]})
    return rows


DYNAMICS_METRIC_COLUMNS = {
    "shortage_share": "units due from winners that nobody delivered / units due",
    "shortage_days": "days of a unit's whole demand unmet (volume-equivalent), summed over units",
    "backup_share": "units delivered by backup suppliers / units due",
    "failures": "winners' supply failures started",
    "hhi": "mean over procured units of the HHI of winners' agreed volumes at the round's award",
    "top_share": "mean over procured units of the largest winner's share of agreed volume",
    "renewals": "re-tenders held",
    "renewal_hhi": "mean HHI of the re-tendered units' awards",
    "exits": "bidders that left a molecule's market before its re-tender",
    "entrants": "new products bidding at re-tenders",
    "renewal_price_change": "mean over re-tendered units of renewal price / first-award price - 1",
    "renewal_unprocured": "share of re-tenders with no winner",
}


def renewal_prices(tenders: pd.DataFrame) -> pd.DataFrame:
    """Each re-tender beside its unit's first award: rep, round, unit, tender, date, first and renewal
    price ratios (volume-weighted winning price / reference price), bidders, exits, entrants, HHI."""
    key = ["rep", "round", "unit"]
    first = tenders[tenders["tender"] == 0][[*key, "price_ratio", "hhi", "n_bidders"]]
    later = tenders[tenders["tender"] > 0]
    out = later.merge(first, on=key, suffixes=("", "_first"))
    out["price_change"] = out["price_ratio"] / out["price_ratio_first"] - 1.0
    return out[[*key, "label", "tender", "date", "n_bidders_first", "n_bidders", "exits", "entrants", "procured",
                "price_ratio_first", "price_ratio", "price_change", "hhi_first", "hhi"]]


def dynamics_metrics(frames: dict[str, pd.DataFrame], rounds: list[str] | None = None) -> pd.DataFrame:
    """One row per replication: shortages, concentration, exits, entries and renewal prices (the
    columns of DYNAMICS_METRIC_COLUMNS), over `rounds` (all when None)."""
    deliveries, tenders = frames["deliveries"], frames["tenders"]
    reps = np.sort(frames["units"]["rep"].unique())
    if rounds is not None:
        deliveries = deliveries[deliveries["round"].isin(rounds)]
        tenders = tenders[tenders["round"].isin(rounds)]
    out = pd.DataFrame(index=pd.Index(reps, name="rep"))
    d = deliveries.groupby("rep")[["units", "backup_units", "shortage_units", "shortage_days", "failures"]].sum()
    d = d.reindex(reps, fill_value=0.0)
    due = d["units"] + d["shortage_units"]
    out["shortage_share"] = (d["shortage_units"] / due.where(due > 0)).fillna(0.0)
    out["shortage_days"] = d["shortage_days"]
    out["backup_share"] = (d["backup_units"] / due.where(due > 0)).fillna(0.0)
    out["failures"] = d["failures"]
    first = tenders[(tenders["tender"] == 0) & tenders["procured"]].groupby("rep")
    out["hhi"] = first["hhi"].mean().reindex(reps)
    out["top_share"] = first["top_share"].mean().reindex(reps)
    later = tenders[tenders["tender"] > 0]
    g = later.groupby("rep")
    out["renewals"] = g["tender"].count().reindex(reps, fill_value=0)
    out["renewal_hhi"] = later[later["procured"]].groupby("rep")["hhi"].mean().reindex(reps)
    out["exits"] = g["exits"].sum().reindex(reps, fill_value=0)
    out["entrants"] = g["entrants"].sum().reindex(reps, fill_value=0)
    rp = renewal_prices(tenders)
    out["renewal_price_change"] = rp.groupby("rep")["price_change"].mean().reindex(reps)
    out["renewal_unprocured"] = (1.0 - g["procured"].mean()).reindex(reps)
    return out


def bid_margins(bids: pd.DataFrame) -> pd.DataFrame:
    """One row per (rep, round): how bidders priced. `margin_share` is the mean over valid bids of
    (bid - reserve) / (ceiling - reserve), the share of the headroom above its lowest acceptable
    price a bidder kept (0 = bid its reserve, 1 = bid the ceiling); `bid_to_ref` is the mean bid /
    reference price; `winning_margin_share` the same share over winning bids."""
    b = bids[np.isfinite(bids["bid"]) & (bids["bid"] <= bids["ceiling"]) & (bids["ceiling"] > bids["reserve"])]
    b = b.assign(margin_share=(b["bid"] - b["reserve"]) / (b["ceiling"] - b["reserve"]),
                 bid_to_ref=b["bid"] / b["ref_price"])
    g = b.groupby(["rep", "round"], sort=False)
    won = b[b["won"]].groupby(["rep", "round"], sort=False)
    out = pd.DataFrame({"margin_share": g["margin_share"].mean(), "bid_to_ref": g["bid_to_ref"].mean(),
                        "winning_margin_share": won["margin_share"].mean()})
    return out.reset_index()
