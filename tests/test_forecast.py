"""Forecast files: the shipped batch 8-11 inputs load, and `vbp forecast --json` has the contract's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vbp.cli import cli
from vbp.errors import InputError
from vbp.forecast import load_forecast

FORECASTS = Path(__file__).resolve().parent.parent / "experiments" / "forecasts"


@pytest.mark.parametrize("name, rulebook", [("batch8", "batch4_9"), ("batch9", "batch4_9"),
                                            ("batch10", "batch10"), ("batch11", "batch11")])
def test_forecast_files_load(name, rulebook):
    s = load_forecast(FORECASTS / f"{name}.toml")
    assert [r.id for r in s.rounds] == [name]
    assert s.rounds[0].rulebook == rulebook
    assert s.rounds[0].bid_date.year >= 2023


def test_forecast_json_contract():
    r = CliRunner().invoke(cli, ["forecast", str(FORECASTS / "batch9.toml"), "-n", "3", "--workers", "1",
                                 "--json", "--set", "agents.strategy=cost_plus"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["round"] == "batch9" and doc["replications"] == 3 and doc["seed"] == 20181206
    for key in ("avg_cut", "winning_firms", "winning_products", "winner_share", "annual_savings_bn"):
        assert set(doc[key]) == {"mean", "ci_low", "ci_high"}
        assert doc[key]["ci_low"] <= doc[key]["mean"] <= doc[key]["ci_high"]
    assert 0 < doc["avg_cut"]["mean"] < 1


def test_forecast_file_without_round_table(tmp_path):
    p = tmp_path / "f.toml"
    p.write_text('[agents]\nmarkup = 0.2\n')
    with pytest.raises(InputError, match="round"):
        load_forecast(p)
    r = CliRunner().invoke(cli, ["forecast", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output


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
