"""Counterfactual variants and paired differences with common random numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbp import counterfactual as cf
from vbp.errors import InputError
from vbp.model import effective_rulebook, run_replication
from vbp.records import to_frames
from vbp.scenario import RuleOverrides, apply_overrides, load_raw, scenario_from_raw

TINY = str(Path(__file__).parent / "data" / "tiny.toml")


def _variant(name: str):
    raw, label = load_raw(TINY)
    return scenario_from_raw(apply_overrides(raw, cf.variant_overrides(name, raw)), label)


def test_paired_ci_known_answer():
    # d = 1, 2, 3: mean 2, sd 1; with 2 degrees of freedom the t quantile has the closed form
    # t_p = (2p - 1) / sqrt(2p(1 - p)), so t_0.975 = 0.95 / sqrt(0.04875) = 4.3027
    mean, lo, hi, n = cf.paired_ci([1.0, 2.0, 3.0])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert (mean, n) == (2.0, 3)
    assert lo == pytest.approx(2 - half, abs=1e-12) and hi == pytest.approx(2 + half, abs=1e-12)


def test_paired_ci_small_samples():
    assert cf.paired_ci([])[3] == 0 and math.isnan(cf.paired_ci([])[0])
    mean, lo, hi, n = cf.paired_ci([0.5, math.nan])
    assert (mean, n) == (0.5, 1) and math.isnan(lo) and math.isnan(hi)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=20), st.floats(-50, 50))
def test_paired_ci_contains_its_mean_and_shifts_with_the_data(d, c):
    mean, lo, hi, n = cf.paired_ci(d)
    assert n == len(d) and lo <= mean + 1e-9 and mean <= hi + 1e-9
    m2, lo2, hi2, _ = cf.paired_ci(np.asarray(d) + c)
    assert m2 == pytest.approx(mean + c, abs=1e-6)
    assert hi2 - lo2 == pytest.approx(hi - lo, abs=1e-6)


def test_paired_differences_pairs_only_replications_both_ran():
    results = pd.DataFrame({
        "variant": ["baseline"] * 3 + ["v"] * 3,
        "rep": [0, 1, 2, 0, 1, 2],
        "status": ["ok", "ok", "ok", "ok", "error", "ok"],
        "m": [1.0, 2.0, 4.0, 2.0, np.nan, 7.0],
    })
    out = cf.paired_differences(results, ["m"])
    assert list(out.columns) == cf.COLUMNS
    row = out.iloc[0]
    assert (row["metric"], row["variant"], row["n"]) == ("m", "v", 2)  # rep 1 failed in the variant
    assert row["baseline_mean"] == 2.5 and row["variant_mean"] == 4.5 and row["diff_mean"] == 2.0
    mean, lo, hi, _ = cf.paired_ci([1.0, 3.0])
    assert (row["diff_ci_low"], row["diff_ci_high"]) == (lo, hi)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-10, 10), st.floats(-10, 10)), min_size=1, max_size=12))
def test_paired_difference_is_difference_of_paired_means(pairs):
    b, v = zip(*pairs)
    n = len(pairs)
    results = pd.DataFrame({"variant": ["baseline"] * n + ["x"] * n, "rep": list(range(n)) * 2,
                            "status": "ok", "m": list(b) + list(v)})
    row = cf.paired_differences(results, ["m"]).iloc[0]
    assert row["n"] == n
    assert row["diff_mean"] == pytest.approx(row["variant_mean"] - row["baseline_mean"], abs=1e-9)


def test_volume_share_plus10_moves_every_multi_winner_table_and_caps_at_one():
    raw, _ = load_raw(TINY)
    raw = apply_overrides(raw, [("rules.volume_share_4plus", 0.95)])
    ov = dict(cf.variant_overrides("volume_share_plus10", raw))
    assert ov["rulebooks.batch2.volume_shares"] == [0.6, 0.7, 0.8, 0.9]
    assert ov["rules.volume_share_4plus"] == 1.0
    assert "rulebooks.stent.volume_shares" not in ov and "rules.volume_share_1" not in ov
    assert cf.variant_overrides("baseline", raw) == []
    with pytest.raises(KeyError):
        cf.variant_overrides("no_such_variant", raw)


def test_every_variant_builds_a_valid_scenario_that_differs_from_the_baseline():
    base = _variant("baseline")
    for name in cf.VARIANTS:
        sc = _variant(name)
        assert sc.digest() != base.digest(), name


def test_anchor_lever_reaches_multi_winner_rulebooks_only():
    sc = _variant("batch11_anchor")
    assert sc.rules.anchor_mean_factor == 0.5
    assert effective_rulebook(sc.rulebook("batch2"), sc.rules).anchor_mean_factor == 0.5
    assert effective_rulebook(sc.rulebook("stent"), sc.rules).anchor_mean_factor is None
    assert effective_rulebook(sc.rulebook("batch2"), RuleOverrides()).anchor_mean_factor is None
    raw, label = load_raw(TINY)
    with pytest.raises(InputError, match="anchor_mean_factor"):
        scenario_from_raw(apply_overrides(raw, [("rules.anchor_mean_factor", 0)]), label)


def test_common_random_numbers_same_draws_different_awards():
    base, single = to_frames([run_replication(_variant("baseline"), 11, 0)]), \
        to_frames([run_replication(_variant("single_winner"), 11, 0)])
    b, s = base["bids"], single["bids"]
    for col in ("round", "unit", "firm", "cost", "reserve", "ceiling", "ref_price"):
        assert b[col].tolist() == s[col].tolist(), col
    drug = single["units"][single["units"]["round"] == "batch2"]
    assert (drug["n_winners"] <= 1).all()
    assert (base["units"].query("round == 'batch2'")["n_winners"] > 1).any()
