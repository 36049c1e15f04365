"""Drug ceilings: a round's own `ceiling_ratio` where documented, else the market-wide
`market.ceiling_ratio_drug` (fitted by `vbp calibrate`), and what a tighter ceiling does to the
cut measured against the reference and against the ceiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vbp import metrics
from vbp.market import generate_units, make_firm_pool
from vbp.model import rng_for, run_replication
from vbp.records import to_frames
from vbp.scenario import load_scenario

DATA = Path(__file__).parent / "data"


def _ratios(scenario) -> dict[str, float]:
    return {r.id: scenario.market.ceiling(r) for r in scenario.rounds}


def test_drug_rounds_without_a_documented_ceiling_take_the_market_ratio():
    s = load_scenario("national-history", ["market.ceiling_ratio_drug=0.8"], calibrated=False)
    got = _ratios(s)
    for rid in ("batch2", "batch3", "batch4", "batch5", "batch7"):
        assert s.rounds[[r.id for r in s.rounds].index(rid)].ceiling_ratio is None
        assert got[rid] == 0.8
    # documented or assumed per round: the pilot, the expansion (capped by the pilot's price),
    # insulin (its ceiling is its reference), the devices
    assert got["pilot"] == got["expansion"] == got["insulin"] == got["joints"] == 1.0
    assert got["stents"] == pytest.approx(0.2479)


def test_a_rounds_own_ratio_wins_over_the_market_ratio():
    s = load_scenario("national-history", ["market.ceiling_ratio_drug=0.8", "rounds.batch7.ceiling_ratio=0.6"],
                      calibrated=False)
    got = _ratios(s)
    assert got["batch7"] == 0.6 and got["batch5"] == 0.8


def test_unit_ceilings_follow_the_ratio():
    s = load_scenario(DATA / "tiny.toml", ["market.ceiling_ratio_drug=0.7"])
    rnd = s.rounds[0]
    assert rnd.category == "drug" and rnd.ceiling_ratio is None
    pool = make_firm_pool(s.agents, rng_for(1, 0, "firms"))
    units = generate_units(rnd, s.agents, s.market, pool, rng_for(1, 0, "market", rnd.id))
    assert units
    for u in units:
        assert u.ceiling == pytest.approx(0.7 * u.ref_price[0])


def _cuts(overrides: list[str]) -> float:
    s = load_scenario(DATA / "tiny.toml", overrides)
    frames = to_frames([run_replication(s, 5, r) for r in range(3)])
    rm = metrics.round_metrics(frames["units"], frames["bids"])
    return float(rm.loc[rm["round"] == "batch2", "avg_cut"].mean())


def test_a_tighter_ceiling_deepens_the_cut_against_the_reference_and_shallows_it_against_the_ceiling():
    """Why the ratio is identified: batches 2-5 publish cuts against the reference, batch 7
    against the ceiling, and a ceiling below the reference moves the two in opposite directions."""
    ref_loose, ref_tight = _cuts(["market.ceiling_ratio_drug=1.0"]), _cuts(["market.ceiling_ratio_drug=0.6"])
    base = "rounds.batch2.cut_base=ceiling"
    ceil_loose = _cuts(["market.ceiling_ratio_drug=1.0", base])
    ceil_tight = _cuts(["market.ceiling_ratio_drug=0.6", base])
    assert ref_loose == pytest.approx(ceil_loose)  # ceiling = reference: the bases coincide
    assert ref_tight > ref_loose + 0.02
    assert ceil_tight < ceil_loose - 0.02
    assert np.isfinite([ref_tight, ceil_tight]).all()
