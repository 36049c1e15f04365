"""Forecast files: the shipped batch 8-11 inputs load, and `vbp forecast --json` has the contract's keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vbp.cli import cli
from vbp.errors import InputError
from vbp.forecast import JSON_KEYS, load_forecast

FORECASTS = Path(__file__).resolve().parent.parent / "experiments" / "forecasts"


@pytest.mark.parametrize("name, rulebook", [("batch8", "batch4_9"), ("batch9", "batch4_9"),
                                            ("batch10", "batch10"), ("batch11", "batch11")])
def test_forecast_files_load(name, rulebook):
    s = load_forecast(FORECASTS / f"{name}.toml")
    assert [r.id for r in s.rounds] == [name]
    assert s.rounds[0].rulebook == rulebook
    assert s.rounds[0].bid_date.year >= 2023


@pytest.mark.parametrize("name, floor", [("batch8", 1), ("batch9", 1), ("batch10", 7), ("batch11", 7)])
def test_entry_threshold_gives_every_molecule_its_least_bidders(name, floor):
    """Batches 10 and 11 list only molecules with >= 7 qualified firms: every generated molecule has
    at least that many bidders of distinct firms, and the round still has its bidding products."""
    from vbp.market import generate_units, make_firm_pool

    s = load_forecast(FORECASTS / f"{name}.toml")
    rnd = s.rounds[0]
    assert rnd.min_bidders == floor
    rng = np.random.default_rng(3)
    units = generate_units(rnd, s.agents, s.market, make_firm_pool(s.agents, rng), rng)
    bidders = np.array([u.n for u in units])
    assert bidders.min() >= floor
    assert bidders.sum() == rnd.bidding_products
    assert all(len(set(u.firm)) == u.n for u in units)


def _one_molecule(tmp_path, extra: str):
    text = (FORECASTS / "batch10.toml").read_text()
    text = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("molecules", "bidding_firms", "bidding_products", "min_bidders")))
    p = tmp_path / "one.toml"
    p.write_text(text.replace("[round]\n", "[round]\nmolecules = 1\n" + extra, 1))
    return p


def test_entry_threshold_holds_when_the_firms_are_derived(tmp_path):
    """With only the products known, the firms worked out from them are at least the threshold."""
    from vbp.market import generate_units, make_firm_pool

    s = load_forecast(_one_molecule(tmp_path, "bidding_products = 15\nmin_bidders = 15\n"))
    rng = np.random.default_rng(0)
    (unit,) = generate_units(s.rounds[0], s.agents, s.market, make_firm_pool(s.agents, rng), rng)
    assert unit.n == 15 and len(set(unit.firm)) == 15


def test_entry_threshold_above_the_bidding_firms_is_refused(tmp_path):
    with pytest.raises(InputError, match="20 bidders per molecule, each of its own firm, but the round has 10"):
        load_forecast(_one_molecule(tmp_path, "bidding_products = 60\nbidding_firms = 10\nmin_bidders = 20\n"))


def test_forecast_json_contract():
    r = CliRunner().invoke(cli, ["forecast", str(FORECASTS / "batch9.toml"), "-n", "3", "--workers", "1",
                                 "--json", "--set", "agents.strategy=cost_plus"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc) == list(JSON_KEYS)  # every key documented (docs/outputs.md), in order
    assert doc["round"] == "batch9" and doc["replications"] == 3 and doc["seed"] == 20181206
    for key in ("avg_cut", "winning_firms", "winning_products", "winner_share", "annual_savings_bn"):
        predictive = {"pi_low", "pi_high"} if key != "winning_products" else set()
        assert set(doc[key]) == {"mean", "ci_low", "ci_high"} | predictive
        assert doc[key]["ci_low"] <= doc[key]["mean"] <= doc[key]["ci_high"]
    assert 0 < doc["avg_cut"]["mean"] < 1
    assert doc["model_error_sd"] > 0 and doc["winner_share_model_error_sd"] > 0
    assert doc["savings_model_error_sd"] > 0


def _forecast_json(monkeypatch, sd, share_sd=0.0, savings_sd=0.0, *sets):
    import vbp.forecast as fc

    sds = {"avg_cut": sd, "winner_share": share_sd, "annual_savings": savings_sd}
    monkeypatch.setattr(fc, "calibrated_model_error", lambda stat="avg_cut": sds[stat])
    extra = [a for s in sets for a in ("--set", s)]
    r = CliRunner().invoke(cli, ["forecast", str(FORECASTS / "batch9.toml"), "-n", "4", "--workers", "1",
                                 "--json", "--set", "agents.strategy=cost_plus", *extra])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_predictive_interval_adds_the_model_error_to_the_replication_spread(monkeypatch):
    none = _forecast_json(monkeypatch, 0.0)
    for key in ("avg_cut", "annual_savings_bn"):  # no model error: the replication interval
        assert none[key]["pi_low"] == pytest.approx(none[key]["ci_low"])
        assert none[key]["pi_high"] == pytest.approx(none[key]["ci_high"])
    wide = _forecast_json(monkeypatch, 0.05)
    assert wide["avg_cut"]["mean"] == none["avg_cut"]["mean"]
    cut, sav = wide["avg_cut"], wide["annual_savings_bn"]
    # a cut error of sd 0.05 spreads the cut by about ±1.96 × 0.05 at least
    assert cut["pi_high"] - cut["pi_low"] >= 2 * 1.9 * 0.05
    assert cut["pi_low"] < cut["ci_low"] and cut["pi_high"] > cut["ci_high"]
    # the savings move in proportion to the cut: relative widening about 0.05 / cut
    rel = (sav["pi_high"] - sav["pi_low"]) / sav["mean"]
    assert rel >= 2 * 1.9 * 0.05 / cut["mean"] * 0.9
    # the winner share's own error leaves the cut alone and widens the share and the winning firms
    both = _forecast_json(monkeypatch, 0.05, 0.08)
    assert both["avg_cut"] == wide["avg_cut"]
    share, firms = both["winner_share"], both["winning_firms"]
    assert share["pi_high"] - share["pi_low"] >= 2 * 1.9 * 0.08
    assert wide["winner_share"]["pi_high"] - wide["winner_share"]["pi_low"] < share["pi_high"] - share["pi_low"]
    # winning firms = winner share x each replication's bidding firms, so they move together
    assert firms["pi_low"] < firms["ci_low"] and firms["pi_high"] > firms["ci_high"]
    bidders = firms["mean"] / share["mean"]
    for end in ("pi_low", "pi_high"):
        assert firms[end] == pytest.approx(share[end] * bidders, rel=0.1)


def test_the_savings_own_error_widens_their_interval_in_proportion_and_nothing_else(monkeypatch):
    cut_only = _forecast_json(monkeypatch, 0.05)
    both = _forecast_json(monkeypatch, 0.05, savings_sd=0.4)
    assert both["savings_model_error_sd"] == 0.4
    for key in ("avg_cut", "winner_share", "winning_firms", "winning_products"):
        assert both[key] == cut_only[key]
    a, b = cut_only["annual_savings_bn"], both["annual_savings_bn"]
    assert b["mean"] == a["mean"] and (b["ci_low"], b["ci_high"]) == (a["ci_low"], a["ci_high"])
    # a log sd of 0.4 stretches the interval by about exp(±1.96 × 0.4) = ×/÷ 2.2 around the mean
    assert b["pi_high"] > 1.8 * a["mean"] and b["pi_low"] < a["mean"] / 1.8
    assert b["pi_high"] > a["pi_high"] and b["pi_low"] < a["pi_low"]
    # alone (no cut error), it still gives the savings a predictive interval
    alone = _forecast_json(monkeypatch, 0.0, savings_sd=0.4)["annual_savings_bn"]
    assert alone["pi_high"] / alone["mean"] == pytest.approx(np.exp(1.96 * 0.4), rel=0.3)


def test_predictive_intervals_stay_in_their_statistics_range(monkeypatch):
    """A model error far larger than any real one: shares and cuts stay in [0, 1], counts and the
    savings (cuts against the reference under a ceiling at the reference) stay non-negative."""
    doc = _forecast_json(monkeypatch, 0.6, share_sd=0.6, savings_sd=0.4)
    for key in ("avg_cut", "winner_share"):
        assert 0.0 <= doc[key]["pi_low"] < doc[key]["pi_high"] <= 1.0
        assert doc[key]["pi_low"] == 0.0 and doc[key]["pi_high"] == 1.0
    for key in ("winning_firms", "annual_savings_bn"):
        assert doc[key]["pi_low"] == 0.0 < doc[key]["pi_high"]
    assert doc["winning_firms"]["pi_high"] <= 262  # never more than the bidders (batch 9: 262 firms)
    # against the reference, under a ceiling at most the reference, the cut is not negative either
    ref = _forecast_json(monkeypatch, 0.6, 0.0, 0.0, "round.cut_base=reference", "market.ceiling_ratio_drug=0.9")
    assert ref["avg_cut"]["pi_low"] == 0.0 and ref["annual_savings_bn"]["pi_low"] == 0.0
    # a ceiling 20% above the reference lets a cut reach -20%, and the savings go negative with it
    above = _forecast_json(monkeypatch, 0.6, 0.0, 0.0, "round.cut_base=reference", "market.ceiling_ratio_drug=1.2")
    assert above["avg_cut"]["pi_low"] == pytest.approx(-0.2)
    assert above["annual_savings_bn"]["pi_low"] < 0.0


def test_device_forecasts_carry_no_drug_model_error(tmp_path, monkeypatch):
    import vbp.forecast as fc
    from vbp.forecast import load_forecast

    monkeypatch.setattr(fc, "calibrated_model_error", lambda stat="avg_cut": 0.05)
    p = tmp_path / "stents.toml"
    p.write_text('[round]\nid = "stents2"\nbid_date = 2022-11-29\nname = "stent renewal"\n'
                 'supply_lag_months = 2.0\ncategory = "stent"\nrulebook = "stent"\nmolecules = 1\n'
                 'bidding_firms = 11\nbidding_products = 26\nmarket_value_bn = 12.3\n')
    from vbp.experiment import run

    doc = fc.forecast_summary(run(load_forecast(p), replications=2, seed=1, workers=1))
    assert doc["model_error_sd"] is None and "pi_low" not in doc["avg_cut"]
    assert doc["winner_share_model_error_sd"] is None and "pi_low" not in doc["winner_share"]
    assert doc["savings_model_error_sd"] is None and "pi_low" not in doc["annual_savings_bn"]


def test_forecast_file_without_round_table(tmp_path):
    p = tmp_path / "f.toml"
    p.write_text('[agents]\nmarkup = 0.2\n')
    with pytest.raises(InputError, match="round"):
        load_forecast(p)
    r = CliRunner().invoke(cli, ["forecast", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output


@pytest.mark.parametrize("old, new, field, needle", [
    ("coverage = 1.0", "coverag = 1.0", "round.coverag", "did you mean 'coverage'"),
    ('bid_date = "', 'bid_datee = "', "round.bid_datee", "did you mean 'bid_date'"),
    ("molecules = 40 ", 'molecules = "forty" ', "round.molecules", "forty"),
    ('rulebook = "batch4_9"', 'rulebook = "batch99"', "round.rulebook", "batch99"),
])
def test_forecast_file_mistakes_are_named_by_its_round_table(tmp_path, old, new, field, needle):
    """The file's [round] table is what the user wrote, so its fields are named round.X."""
    text = (FORECASTS / "batch8.toml").read_text(encoding="utf-8")
    assert old in text
    p = tmp_path / "f.toml"
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    r = CliRunner().invoke(cli, ["forecast", str(p), "-n", "1"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{p}: {field}" in r.stderr and needle in r.stderr and "rounds." not in r.stderr, r.stderr


def test_forecast_set_keeps_the_scenario_paths_it_was_given():
    r = CliRunner().invoke(cli, ["forecast", str(FORECASTS / "batch8.toml"), "-n", "1",
                                 "--set", "rounds.batch8.molecules=-3"])
    assert r.exit_code == 2 and "rounds.batch8.molecules" in r.stderr and "-3" in r.stderr, r.stderr


def _cuts_and_bids(overrides):
    from vbp.experiment import run
    s = load_forecast(FORECASTS / "batch11.toml", overrides)
    res = run(s, replications=2, seed=5, workers=1)
    return res.frames["units"], res.frames["bids"]


def test_cut_base_ceiling_measures_cuts_against_the_ceiling():
    """batch 11's ceiling is half the reference: its cut against the ceiling is 1 - price/ceiling per
    winning product; against the reference the same prices give a deeper cut. Bids are unchanged."""
    units_c, bids_c = _cuts_and_bids(("rounds.batch11.cut_base=ceiling",))
    units_r, bids_r = _cuts_and_bids(("rounds.batch11.cut_base=reference",))
    assert bids_c["price"].equals(bids_r["price"])
    won = bids_c[bids_c["won"]]
    assert (won["ceiling"] < won["ref_price"]).all()
    expect = (1 - won["price"] / won["ceiling"]).groupby([won["rep"], won["unit"]]).mean()
    got = units_c[units_c["procured"]].set_index(["rep", "unit"])["cut"]
    assert got.sort_index().to_numpy() == pytest.approx(expect.sort_index().to_numpy())
    savings = ((won["ceiling"] - won["price"]) * won["agreed_units"]).sum()
    assert units_c["annual_savings"].sum() == pytest.approx(savings)
    procured = units_c["procured"]
    assert (units_r["cut"][procured] > units_c["cut"][procured]).all()


def test_forecast_reports_its_cut_base():
    r = CliRunner().invoke(cli, ["forecast", str(FORECASTS / "batch8.toml"), "-n", "2", "--workers", "1",
                                 "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cut_base"] == "ceiling"
