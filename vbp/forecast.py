"""Forecasts: a round described only by its inputs -> predicted outcomes with 95% intervals.

A forecast file holds one `[round]` table with the same fields as a scenario's inline round
(date, molecules, bidding firms and products, rulebook, market value if known) and, optionally,
`[agents]`, `[market]`, `[rules]` overrides. The calibrated parameters apply as in any scenario.
A `--set` override reaches the round's fields as `round.FIELD` (or `rounds.<id>.FIELD`, as in a
scenario), e.g. `--set round.molecules=45`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from vbp import data, metrics
from vbp.errors import InputError, did_you_mean
from vbp.experiment import RunResult, run
from vbp.predictive import predictive_interval
from vbp.scenario import (
    Round,
    Scenario,
    parse_override,
    read_toml_file,
    resolve_raw,
    scenario_from_raw,
    scenario_with_overrides,
)

__all__ = ["load_forecast", "forecast_summary", "run_forecast", "calibrated_model_error", "STATS",
           "JSON_KEYS"]

STATS = ("avg_cut", "winning_firms", "winning_products", "winner_share", "annual_savings_bn")

# The `vbp forecast --json` document, key by key (docs/outputs.md is rendered from it).
JSON_KEYS = {
    "round": "the round's id",
    "avg_cut": "average cut over molecules (share): `mean`, `ci_low`, `ci_high` (95% over replications); "
               "`pi_low`, `pi_high` (95% predictive, with the calibrated model error) for a drug round",
    "winning_firms": "firms with at least one winning product: as `avg_cut`, the predictive interval "
                     "from the winner share's model error",
    "winning_products": "winning products: `mean`, `ci_low`, `ci_high`",
    "winner_share": "share of bidding firms that win: as `avg_cut`",
    "annual_savings_bn": "first-year savings at agreed volume, CNY bn: as `avg_cut`, the predictive interval "
                         "moving with the cut and, in proportion, with the savings' own model error",
    "model_error_sd": "the calibrated out-of-sample sd of a drug round's average cut (null for devices or "
                      "before a calibration)",
    "winner_share_model_error_sd": "the same for the share of bidding firms that win",
    "savings_model_error_sd": "the calibrated sd of the log error of a drug round's first-year savings beyond "
                              "its cut's (the agreed value: market value, agreed share); null likewise",
    "procured": "molecules procured (at least one winner): `mean`, `ci_low`, `ci_high`",
    "molecules_listed": "molecules listed in the file (`[round] molecules`)",
    "cut_base": "what the cut is measured against: `reference` (pre-VBP price) or `ceiling`",
    "replications": "replications simulated",
    "seed": "the seed",
}


def load_forecast(path: str | Path, overrides: tuple[str, ...] = ()) -> Scenario:
    """Read a forecast file into a one-round scenario, with `--set` overrides: `round.FIELD` is the
    file's round (`rounds.<id>.FIELD`). Mistakes in the file name the file; those the overrides
    bring name `--set`."""
    file = str(path)
    doc = read_toml_file(Path(path))
    allowed = {"round", "agents", "market", "dynamics", "rules", "optimizer", "rulebooks"}
    for key in doc:
        if key not in allowed:
            raise InputError(f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(sorted(allowed))}",
                             file=file, field=key)
    rnd = doc.get("round")
    if not isinstance(rnd, dict):
        raise InputError("missing required table [round] describing the round's inputs", file=file,
                         field="round")
    known = set(Round.model_fields) | {"from"}
    for key in rnd:
        if key not in known:
            raise InputError(f"unknown key{did_you_mean(key, known)}", file=file, field=f"round.{key}")
    if "bid_date" not in rnd:
        raise InputError("missing required field", file=file, field="round.bid_date")
    bid = rnd["bid_date"]
    if isinstance(bid, str):
        try:
            bid = dt.date.fromisoformat(bid)
        except ValueError:
            raise InputError(f"expected a date like 2023-03-29, got {bid!r}", file=file,
                             field="round.bid_date", value=bid) from None
    if not isinstance(bid, dt.date):
        raise InputError(f"expected a date, got {bid!r}", file=file, field="round.bid_date", value=bid)
    scen = {k: v for k, v in doc.items() if k != "round"}
    scen.update({"name": rnd.get("id", Path(file).stem), "start": dt.date(bid.year, 1, 1).isoformat(),
                 "end": dt.date(bid.year + 3, 12, 31).isoformat(), "rounds": [rnd],
                 "description": f"forecast of {rnd.get('name', rnd.get('id', file))}"})
    try:  # the file alone: its mistakes are named by the file's own [round] table
        raw = resolve_raw(scen, file)
        scenario = scenario_from_raw(raw, file)
    except InputError as exc:
        text = str(exc)
        for inner in (f"rounds.{scen['name']}.", "rounds[0]."):
            text = text.replace(inner, "round.")
        raise InputError(text.replace("rounds[0]", "round")) from None
    if not overrides:
        return scenario
    rid = scenario.rounds[0].id
    sets, labels = [], []
    for item in overrides:
        where, value = parse_override(item)
        if where == "round" or where.startswith("round."):  # the file's [round] table
            sets.append((f"rounds.{rid}{where[len('round'):]}", value))
        else:
            sets.append((where, value))
        labels.append(where)
    return scenario_with_overrides(raw, sets, file, labels=labels, alias=(f"rounds.{rid}", "round"))


def calibrated_model_error(stat: str = "avg_cut") -> float | None:
    """A drug statistic's structural error sd stored by `vbp calibrate` (None before one): the
    average cut's (`avg_cut`), the share of bidding firms that win (`winner_share`), or the log
    sd of the first-year savings beyond the cut's error (`annual_savings`)."""
    try:
        me = data.read_toml("calibration.toml").get("model_error", {})
    except FileNotFoundError:
        return None
    if stat == "avg_cut":
        sd = me.get("avg_cut_sd")
    else:
        sd = me.get(stat, {}).get("log_sd" if stat == "annual_savings" else "sd")
    return None if sd is None else float(sd)


def forecast_summary(result: RunResult) -> dict:
    """The forecast JSON document: each statistic's mean and 95% interval over replications; for
    the average cut and the annual savings, and for the winner share and winning firms, also a 95%
    predictive interval (`pi_low`, `pi_high`) that adds the calibration's out-of-sample model error
    of the cut or of the winner share (`vbp.predictive`); the savings' interval also carries their
    own proportional error beyond the cut's."""
    rm = metrics.round_metrics(result.frames["units"], result.frames["bids"])
    rid = result.scenario.rounds[0].id
    sub = rm[rm["round"] == rid]
    doc: dict = {"round": rid}
    for stat in STATS:
        s = metrics.summarize(sub[stat])
        doc[stat] = {"mean": s["mean"], "ci_low": s["ci_low"], "ci_high": s["ci_high"]}
    # estimated on the drug rounds, so only drug forecasts carry it
    drug = result.scenario.rounds[0].category == "drug"
    sds = {base: calibrated_model_error(base) if drug else None
           for base in ("avg_cut", "winner_share", "annual_savings")}
    # Each interval stays within what its statistic can be. A price is never negative, so a cut is
    # at most 1. Where the ceiling is a cap, no price is above it, so a cut is not negative against
    # the ceiling, nor against the reference while the ceiling is at most the reference (a ceiling
    # above it lets the cut fall to 1 - ceiling / reference; the tighter 1 - ratio of a ceiling
    # below the reference is not used, as the ratio is itself fitted); the savings follow the cut's
    # sign. A share lies in [0, 1]; winning firms are never negative nor more than any
    # replication's bidding firms.
    rnd = result.scenario.rounds[0]
    if not result.scenario.rulebook(rnd.rulebook).ceiling_is_cap:
        floor = -np.inf
    elif rnd.cut_base == "ceiling":
        floor = 0.0
    else:
        floor = min(0.0, 1.0 - result.scenario.market.ceiling(rnd))
    bounds = {"avg_cut": (floor, 1.0), "annual_savings_bn": (0.0 if floor == 0.0 else -np.inf, np.inf),
              "winner_share": (0.0, 1.0), "winning_firms": (0.0, float(sub["bidding_firms"].max()))}
    # predictive intervals: replication spread plus the model's structural error in the cut, which
    # moves the savings in proportion (savings / cut per replication) and is joined there by their
    # own proportional error, and in the winner share, which moves the winning firms in proportion
    # (winning firms = share x the replication's bidders)
    for base, follower, own in (("avg_cut", "annual_savings_bn", sds["annual_savings"] or 0.0),
                                ("winner_share", "winning_firms", 0.0)):
        if sds[base] is None:
            continue
        x, f = sub[base].to_numpy(float), sub[follower].to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(x > 0, f / x, np.nan)
        for stat, src, scale, log_sd in ((base, x, None, 0.0), (follower, f, per, own)):
            lo, hi = predictive_interval(src, sds[base], seed=result.seed, scale=scale, log_sd=log_sd,
                                         bounds=bounds[stat])
            doc[stat].update(pi_low=lo, pi_high=hi)
    doc["model_error_sd"] = sds["avg_cut"]
    doc["winner_share_model_error_sd"] = sds["winner_share"]
    doc["savings_model_error_sd"] = sds["annual_savings"] if sds["avg_cut"] is not None else None
    doc["procured"] = {k: v for k, v in metrics.summarize(sub["procured"]).items() if k != "n"}
    doc["molecules_listed"] = result.scenario.rounds[0].molecules
    doc["cut_base"] = result.scenario.rounds[0].cut_base
    doc["replications"] = result.replications
    doc["seed"] = result.seed
    return doc


def run_forecast(path: str | Path, *, replications: int, seed: int, workers: int | None,
                 overrides: tuple[str, ...] = (), progress=None) -> tuple[RunResult, dict]:
    """Simulate the round `replications` times and summarise."""
    scenario = load_forecast(path, overrides)
    result = run(scenario, replications=replications, seed=seed, workers=workers, progress=progress)
    return result, forecast_summary(result)
