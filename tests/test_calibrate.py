"""Calibration: moments come from the published table, the surrogate is exact on quadratics,
and a small calibration of the stent cost recovers a cost that reproduces the stent cut."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vbp import calibrate as cal
from vbp.scenario import load_raw


def test_moments_exclude_savings_and_rounds_after_batch7():
    ms = cal.moments_for(("pilot", "batch2", "batch3", "batch4", "batch5", "batch7", "joints", "insulin"))
    names = {m.name for m in ms}
    assert "batch3.avg_cut" in names and "batch3.winner_share" in names and "pilot.procured_share" in names
    assert not any("saving" in n for n in names)
    assert not any(n.startswith(("batch8", "batch9", "batch10", "batch11")) for n in names)
    b3 = {m.name: m for m in ms}["batch3.winner_share"]
    assert b3.published == pytest.approx(125 / 189)
    # winners per molecule only where bidding products are published: batch 5 (355), not batches 2-4, 7
    assert {m.name: m for m in ms}["batch5.winners_per_unit"].published == pytest.approx(251 / 61)
    assert not {"batch2.winners_per_unit", "batch3.winners_per_unit", "batch7.winners_per_unit"} & names


def test_quadratic_surrogate_is_exact_on_a_quadratic():
    rng = np.random.default_rng(0)
    u = rng.random((30, 3))
    y = 1 + u @ [0.5, -1, 2] + 0.7 * u[:, 0] * u[:, 2] - 0.3 * u[:, 1] ** 2
    coef, *_ = np.linalg.lstsq(cal._features(u), y, rcond=None)
    np.testing.assert_allclose(cal._features(u) @ coef, y, atol=1e-10)


def test_unit_scaling_round_trips():
    params = cal.GROUPS[0].params
    x = np.array([0.2, 0.9, 0.3, 62.0, 0.7, 0.4])
    np.testing.assert_allclose(cal._from_unit(cal._to_unit(x, params), params), x)


def test_stent_calibration_reproduces_the_stent_cut():
    group = dataclasses.replace(cal.GROUPS[1], design=5)
    raw, file = load_raw("national-history", calibrated=False)
    import json

    base = json.loads(json.dumps(raw, default=str))
    fit = cal.calibrate_group(group, base, file, reps=1, seed=3, workers=1)
    median = fit.params["agents.cost_median_stent"]
    assert 0.005 <= median <= 0.2
    assert abs(fit.confirmed["stents.avg_cut"] - 0.93) < 0.03
    doc = cal.to_toml([fit], command="test", seed=3, reps=1)
    assert doc["parameters"]["agents.cost_median_stent"] == pytest.approx(median, abs=1e-6)
    assert doc["fit"]["stent"]["moments"][0]["name"] == "stents.avg_cut"


def test_cached_evaluations_are_keyed_by_the_code(monkeypatch):
    """A model change must not reuse evaluations cached by the old code."""
    sc = cal._scenario(load_raw("national-history", calibrated=False)[0], "x", ("stents",), {})
    key = cal._eval_key(sc, 2, 1, ["stents.avg_cut"])
    assert key == cal._eval_key(sc, 2, 1, ["stents.avg_cut"])
    monkeypatch.setattr(cal, "code_digest", lambda: "other code")
    assert cal._eval_key(sc, 2, 1, ["stents.avg_cut"]) != key
