"""Analysis scripts shipped with the experiments: known answers on hand-made tables and a run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vbp import metrics
from vbp.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent


def _load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gap = _load("experiments/batch7_gap/gap.py")
definitions = _load("experiments/batch7_gap/definitions.py")


def test_published_gap_is_batch7_less_the_molecule_weighted_earlier_batches():
    # (32 x 53 + 55 x 53 + 45 x 52 + 61 x 56) / 193 = 53.72%; batch 7 published 48%
    assert gap.published_gap() == pytest.approx(0.48 - 10367 / 19300, abs=1e-9)


def test_gap_table_weights_batches_by_procured_molecules():
    w = {r: metrics.round_targets()[r]["products_won"] for r in gap.EARLIER}
    rows = []
    for point, shift in ((0, 0.0), (1, 0.1)):
        for rep in range(2):
            row = {"point": point, "rep": rep, "status": "ok", "agents.products_per_firm": 1.5 + point,
                   "avg_cut.batch7": 0.6 + shift + 0.02 * rep}
            row.update({f"avg_cut.{r}": 0.4 + 0.01 * i for i, r in enumerate(gap.EARLIER)})
            rows.append(row)
    rows.append({**rows[0], "rep": 9, "status": "error", "avg_cut.batch7": 5.0})  # failed tasks are left out
    frame = pd.DataFrame(rows)
    table = gap.gap_table(frame, ["agents.products_per_firm"]).set_index("point")
    earlier = sum(w[r] * (0.4 + 0.01 * i) for i, r in enumerate(gap.EARLIER)) / sum(w.values())
    assert table.loc[0, "batches2_5"] == pytest.approx(earlier)
    assert table.loc[0, "gap"] == pytest.approx(0.61 - earlier)
    assert table.loc[1, "gap"] == pytest.approx(0.71 - earlier)
    assert table.loc[0, "replications"] == 2
    assert table.loc[1, "agents.products_per_firm"] == 2.5
    assert table.loc[0, "gap_low"] < table.loc[0, "gap"] < table.loc[0, "gap_high"]


def test_gap_reads_the_design_columns_of_a_sweep_table():
    cols = ["point", "rep", "seed", "status", "error", "a.x", "b.y", "drug_avg_cut", "avg_cut.batch7"]
    assert gap.param_columns(pd.DataFrame(columns=cols)) == ["a.x", "b.y"]


def test_cut_definitions_on_a_hand_made_round():
    # molecule 0: two winners cutting 20% and 60% (1 and 3 units); molecule 1: one winner cutting
    # 50% against its ceiling of 0.8 (4 units); a loser that must not count
    bids = pd.DataFrame({
        "round": ["r"] * 4, "rep": [0] * 4, "unit": [0, 0, 1, 1],
        "won": [True, True, True, False],
        "price": [0.8, 0.4, 0.4, 0.1], "ref_price": [1.0] * 4, "ceiling": [1.0, 1.0, 0.8, 0.8],
        "agreed_units": [1.0, 3.0, 4.0, 0.0],
    })
    ref = definitions.cut_definitions(bids, {"r": "reference"}).loc["r"]
    assert ref["molecules"] == pytest.approx((0.4 + 0.6) / 2)
    assert ref["products"] == pytest.approx((0.2 + 0.6 + 0.6) / 3)
    assert ref["volume"] == pytest.approx((0.2 * 1 + 0.6 * 3 + 0.6 * 4) / 8)
    ceil = definitions.cut_definitions(bids, {"r": "ceiling"}).loc["r"]
    assert ceil["molecules"] == pytest.approx((0.4 + 0.5) / 2)


def test_cut_definitions_over_molecules_is_the_models_own_average_cut(run_dir):
    frames = {k: pd.read_parquet(run_dir / f"{k}.parquet") for k in ("bids", "units")}
    scenario = load_scenario(str(ROOT / "tests" / "data" / "tiny.toml"))
    bases = definitions.run_cut_bases(run_dir)
    assert bases == {r.id: r.cut_base for r in scenario.rounds}
    table = definitions.cut_definitions(frames["bids"], bases)
    own = metrics.round_metrics(frames["units"], frames["bids"]).groupby("round")["avg_cut"].mean()
    assert len(own) > 0
    np.testing.assert_allclose(table.loc[own.index, "molecules"].to_numpy(), own.to_numpy(), rtol=1e-12)


compare = _load("experiments/bidder_count/compare.py")


def test_calibration_record_reads_the_files_own_figures():
    doc = {"fit": {"drug": {"objective": 3.0, "moments": [
        {"name": "a.avg_cut", "error": 0.01}, {"name": "b.avg_cut", "error": -0.03},
        {"name": "a.winner_share", "error": 0.1}, {"name": "a.max_cut", "error": 0.5}]}},
        "loro": [{"error": 0.02}, {"error": -0.04}],
        "loro_winner_share": [{"error": 0.06}],
        "rolling": [{"stat": "avg_cut", "error": 0.01}, {"stat": "winner_share", "error": 0.3}],
        "model_error": {"covered": 2, "avg_cut_sd": 0.05, "winner_share": {"covered": 1}}}
    r = compare.record(doc)
    assert r["drug objective"] == 3.0
    assert r["in-sample cut MAE, pts (fit's replications)"] == pytest.approx(2.0)
    assert r["in-sample winner share MAE, pts"] == pytest.approx(10.0)
    assert r["LORO cut MAE, pts"] == pytest.approx(3.0) and r["LORO cuts covered"] == 2
    assert r["LORO winner share MAE, pts"] == pytest.approx(6.0)
    assert r["rolling-origin cut MAE, pts"] == pytest.approx(1.0)  # the winner-share row is not a cut


def test_calibration_comparison_simulates_the_files_parameters_and_settings(monkeypatch):
    seen = {}

    def fake_run(scenario, **kw):
        seen["bidder_count"] = scenario.market.bidder_count
        seen["cost"] = scenario.agents.cost_median_drug
        raise RuntimeError("stop")

    monkeypatch.setattr(compare, "run", fake_run)
    doc = {"parameters": {"agents.cost_median_drug": 0.3, "market.bidder_count": "bids"},
           "fit": {"drug": {"moments": []}}}
    with pytest.raises(RuntimeError, match="stop"):
        compare.simulate(doc, 2, 1, 1)
    assert seen == {"bidder_count": "bids", "cost": 0.3}


def test_the_shipped_bids_calibration_was_fitted_under_its_setting_and_carries_it():
    doc = compare.read(ROOT / "experiments/bidder_count/calibration-bids.toml")
    assert doc["meta"]["fixed"] == ["market.bidder_count=bids"]
    assert doc["parameters"]["market.bidder_count"] == "bids"
    r = compare.record(doc)
    assert all(np.isfinite(v) for v in r.values())
    assert r["LORO cut MAE, pts"] == pytest.approx(100 * np.mean([abs(x["error"]) for x in doc["loro"]]))
