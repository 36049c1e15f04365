"""What a drug round's bidding counts mean: `market.bidder_count` (docs/model.md, Initialisation).

'entrants' (the calibrated convention): the round's products are generated and those priced out by
a capped ceiling do not bid. 'bids' (as published): entrants are added until that many can bid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vbp.cli import cli
from vbp.market import TOP_UP_LIMIT, can_bid, generate_units, top_up
from vbp.model import Simulation, rng_for
from vbp.scenario import load_scenario

TINY = Path(__file__).parent / "data" / "tiny.toml"


def _scenario(count: str, *extra: str):
    return load_scenario("national-history", [f"market.bidder_count={count}", *extra], calibrated=True)


def _round(scenario, rid: str):
    return next(r for r in scenario.rounds if r.id == rid)


@pytest.mark.parametrize("rid", ["batch2", "batch5"])
def test_bids_top_up_the_generated_entrants_to_the_published_count(rid):
    """The first bidders of every molecule are the generated ones, unchanged; entrants are appended,
    from the round's firms, distinct within a molecule, at the reference price and without brand
    margin, until exactly the round's bidding products can bid."""
    plain, topped = (Simulation(_scenario(c), 20181206, 3) for c in ("entrants", "bids"))
    rnd = _round(plain.scenario, rid)
    a, b = plain.open_round(rnd), topped.open_round(rnd)
    products = rnd.bidding_products or round(rnd.bidding_firms * plain.scenario.agents.products_per_firm)
    assert sum(int(can_bid(u).sum()) for u in a) < products  # some entrants are priced out
    assert sum(int(can_bid(u).sum()) for u in b) == products
    firms = np.unique(np.concatenate([u.firm for u in a]))
    for u, v in zip(a, b, strict=True):
        n = u.n
        for field in ("firm", "originator", "cost", "reserve", "capacity", "ref_price"):
            np.testing.assert_array_equal(getattr(v, field)[:n], getattr(u, field))
        assert (v.demand, v.ceiling, v.cost_scale, v.norm_price) == (u.demand, u.ceiling, u.cost_scale, u.norm_price)
        new = slice(n, v.n)
        assert len(set(v.firm)) == v.n and set(v.firm[new]) <= set(firms)
        assert not v.originator[new].any()
        np.testing.assert_array_equal(v.reserve[new], v.cost[new])
        np.testing.assert_array_equal(v.ref_price[new], np.full(v.n - n, u.norm_price))


def test_the_default_counts_entrants_and_changes_nothing():
    s = _scenario("entrants")
    assert load_scenario("national-history").market.bidder_count == "entrants"
    sim = Simulation(s, 20181206, 0)
    rnd = _round(s, "batch3")
    units = sim.open_round(rnd)
    again = generate_units(rnd, s.agents, s.market, Simulation(s, 20181206, 0).pool,
                           rng_for(20181206, 0, "market", rnd.id))
    assert [u.n for u in units] == [u.n for u in again]
    assert sum(u.n for u in units) == round(rnd.bidding_firms * s.agents.products_per_firm)


def test_top_up_stops_at_its_limit_when_nobody_can_bid():
    s = _scenario("entrants")
    sim = Simulation(s, 20181206, 0)
    rnd = _round(s, "batch2")
    units = [dataclasses.replace(u, ceiling=0.0) for u in sim.open_round(rnd)]
    out = top_up(units, rnd, s.agents, sim.pool, np.random.default_rng(0))
    products = sum(u.n for u in units)
    added = sum(v.n for v in out) - products
    assert added == TOP_UP_LIMIT * products  # every entrant is priced out: the cap stops it
    assert not any(can_bid(v).any() for v in out)


def test_expansion_tops_up_under_the_pilots_cap():
    """The expansion's ceiling (the pilot's winning price) is set before the top-up, so its entrants
    are counted against the cap they will face."""
    sim = Simulation(_scenario("bids"), 20181206, 1)
    pilot, expansion = _round(sim.scenario, "pilot"), _round(sim.scenario, "expansion")
    sim.award_round(pilot, sim.open_round(pilot))
    units = sim.open_round(expansion)
    capped = [u for u in units if u.ceiling < sim.scenario.market.ceiling(expansion) * u.norm_price]
    assert capped
    assert sum(int(can_bid(u).sum()) for u in units) == round(expansion.bidding_firms
                                                              * sim.scenario.agents.products_per_firm)


def test_cli_set_bidder_count():
    run = CliRunner().invoke(cli, ["run", str(TINY), "-n", "2", "--workers", "1", "--quiet", "--json",
                                   "--set", "market.bidder_count=bids"])
    assert run.exit_code == 0, run.output
    bad = CliRunner().invoke(cli, ["run", str(TINY), "-n", "2", "--quiet", "--set", "market.bidder_count=all"])
    assert bad.exit_code == 2 and "bidder_count" in bad.output and "all" in bad.output
