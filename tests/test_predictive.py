"""Predictive intervals: the structural error estimate, the mixing of it into replication draws,
the out-of-sample coverage check, and the values `vbp calibrate` stored."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbp import data
from vbp.predictive import loro_coverage, predictive_interval, structural_sd


def test_structural_sd_removes_replication_variance():
    # residuals 0.03 and 0.05 with replication sds 0.03 and 0.03: mean(e² − s²) = (0 + 0.0016) / 2
    assert structural_sd([0.03, -0.05], [0.03, 0.03]) == pytest.approx(math.sqrt(0.0008))


def test_structural_sd_is_zero_when_noise_explains_the_residuals():
    assert structural_sd([0.01, -0.02], [0.05, 0.05]) == 0.0


def test_structural_sd_needs_one_sd_per_residual():
    with pytest.raises(ValueError, match="one replication sd per residual"):
        structural_sd([0.1, 0.2], [0.1])


def test_without_model_error_the_interval_is_the_replication_interval():
    x = np.linspace(0.4, 0.6, 21)
    assert predictive_interval(x, 0.0, seed=1) == pytest.approx(tuple(np.percentile(x, [2.5, 97.5])))


def test_the_interval_of_a_point_mass_is_normal():
    lo, hi = predictive_interval([0.5] * 10, 0.02, seed=7)
    assert lo == pytest.approx(0.5 - 1.96 * 0.02, abs=0.002)
    assert hi == pytest.approx(0.5 + 1.96 * 0.02, abs=0.002)


def test_scale_converts_the_error_into_the_statistic_units():
    # savings of 20 at a cut of 0.5: a 0.02 error in the cut is a 0.8 error in the savings
    lo, hi = predictive_interval([20.0] * 10, 0.02, seed=7, scale=[40.0] * 10)
    assert (hi - lo) / 2 == pytest.approx(1.96 * 0.8, rel=0.02)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), st.floats(0.001, 0.2),
       st.integers(0, 2**31))
def test_more_model_error_never_narrows_the_interval(draws, sd, seed):
    lo0, hi0 = predictive_interval(draws, 0.0, seed=seed)
    lo1, hi1 = predictive_interval(draws, sd, seed=seed)
    lo2, hi2 = predictive_interval(draws, 2 * sd, seed=seed)
    assert hi1 - lo1 >= (hi0 - lo0) - 1e-9
    assert hi2 - lo2 >= hi1 - lo1 - 1e-9
    assert predictive_interval(draws, sd, seed=seed) == (lo1, hi1)  # seeded: the same every time


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30), st.floats(0.0, 0.5), st.integers(0, 2**31))
def test_bounds_clip_the_interval_and_nothing_else(draws, sd, seed):
    """Within [0, 1] the interval is the unbounded one clipped: its ends never leave the range,
    and an end inside it does not move."""
    free = predictive_interval(draws, sd, seed=seed)
    lo, hi = predictive_interval(draws, sd, seed=seed, bounds=(0.0, 1.0))
    assert 0.0 <= lo <= hi <= 1.0
    assert (lo, hi) == pytest.approx(tuple(np.clip(free, 0.0, 1.0)))


def test_a_share_near_its_bound_keeps_its_interval_inside():
    lo, hi = predictive_interval([0.98] * 10, 0.05, seed=3, bounds=(0.0, 1.0))
    assert hi == 1.0 and lo == pytest.approx(0.98 - 1.96 * 0.05, abs=0.005)


ROWS = [{"round": "a", "published": 0.52, "predicted": 0.54}, {"round": "b", "published": 0.59, "predicted": 0.67},
        {"round": "c", "published": 0.53, "predicted": 0.50}, {"round": "d", "published": 0.48, "predicted": 0.59}]
DRAWS = {k: np.random.default_rng(i).normal(0.5, s, 20)
         for i, (k, s) in enumerate(zip("abcd", (0.09, 0.06, 0.04, 0.02)))}


def test_a_rounds_own_outcome_plays_no_part_in_its_interval():
    base = loro_coverage(ROWS, DRAWS, seed=3)
    moved = loro_coverage([{**r, "published": 0.9} if r["round"] == "d" else r for r in ROWS], DRAWS, seed=3)
    assert (moved[3]["pi_low"], moved[3]["pi_high"]) == (base[3]["pi_low"], base[3]["pi_high"])
    assert base[3]["covered"] is False and moved[3]["covered"] is False
    assert moved[0]["structural_sd_without_round"] > base[0]["structural_sd_without_round"]


def test_coverage_rows_are_centred_on_the_prediction():
    for row in loro_coverage(ROWS, DRAWS, seed=3):
        assert row["pi_low"] < row["predicted"] < row["pi_high"]
        assert row["covered"] == (row["pi_low"] <= row["published"] <= row["pi_high"])


def test_coverage_needs_draws_for_every_round():
    with pytest.raises(ValueError, match=r"\['d'\]"):
        loro_coverage(ROWS, {k: v for k, v in DRAWS.items() if k != "d"}, seed=3)


def test_the_stored_model_error_follows_from_its_rows():
    """The shipped calibration's structural sd is the estimator applied to the rows stored beside it,
    and its rows are the leave-one-round-out predictions of the same file."""
    doc = data.read_toml("calibration.toml")
    me = doc["model_error"]
    rows = me["rounds"]
    assert [r["round"] for r in rows] == [r["round"] for r in doc["loro"]]
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in doc["loro"]]
    sd = structural_sd([r["predicted"] - r["published"] for r in rows], [r["replication_sd"] for r in rows])
    assert me["avg_cut_sd"] == pytest.approx(sd, abs=1e-4)
    assert me["covered"] == sum(r["covered"] for r in rows)
    for r in rows:
        assert r["covered"] == (r["pi_low"] <= r["published"] <= r["pi_high"])
    # the same for the share of bidding firms that win
    share = me["winner_share"]
    rows = share["rounds"]
    assert [(r["round"], r["predicted"]) for r in rows] == [(r["round"], r["predicted"])
                                                            for r in doc["loro_winner_share"]]
    sd = structural_sd([r["predicted"] - r["published"] for r in rows], [r["replication_sd"] for r in rows])
    assert share["sd"] == pytest.approx(sd, abs=1e-4)
    assert share["covered"] == sum(r["covered"] for r in rows) and share["rounds_checked"] == len(rows)


def test_a_proportional_error_gives_a_lognormal_interval():
    lo, hi = predictive_interval([10.0] * 10, 0.0, seed=7, log_sd=0.5)
    assert lo == pytest.approx(10 * math.exp(-1.96 * 0.5), rel=0.02)
    assert hi == pytest.approx(10 * math.exp(1.96 * 0.5), rel=0.02)


def test_without_a_proportional_error_the_interval_is_unchanged():
    x = np.linspace(10, 20, 15)
    assert predictive_interval(x, 0.02, seed=3, scale=x / 0.5, log_sd=0.0) == \
        predictive_interval(x, 0.02, seed=3, scale=x / 0.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1.0, 50.0), min_size=2, max_size=20), st.floats(0.0, 0.1), st.floats(0.01, 1.0),
       st.integers(0, 2**31))
def test_a_proportional_error_never_narrows_the_interval(draws, sd, log_sd, seed):
    x = np.asarray(draws)
    lo0, hi0 = predictive_interval(x, sd, seed=seed, scale=x / 0.5)
    lo1, hi1 = predictive_interval(x, sd, seed=seed, scale=x / 0.5, log_sd=log_sd)
    assert hi1 - lo1 >= (hi0 - lo0) * 0.98


def test_the_stored_savings_error_follows_from_its_rows():
    """The shipped calibration's savings error is the estimator applied to its stored residuals, over
    the drug rounds with published first-year savings, and its coverage counts match."""
    me = data.read_toml("calibration.toml")["model_error"]["annual_savings"]
    rows = me["groups"]
    assert {r["group"] for r in rows} == {"batch4", "batch5", "batch7", "first batch"}
    for r in rows:
        implied = math.log(r["simulated_bn"] / r["simulated_cut"]) - math.log(r["published_bn"] / r["published_cut"])
        assert r["log_error"] == pytest.approx(implied, abs=0.02)  # mean of logs vs log of means
    sd = structural_sd([r["log_error"] for r in rows], [r["replication_sd"] for r in rows])
    assert me["log_sd"] == pytest.approx(sd, abs=1e-3)
    assert me["covered"] == sum(r["covered"] for r in rows) and me["groups_checked"] == len(rows)
