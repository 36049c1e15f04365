"""Drug cost structure: molecule cost levels and firm efficiency (docs/model.md, Initialisation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from vbp.market import FirmPool, cost_level_z, firm_costs, generate_units, make_firm_pool
from vbp.model import Simulation, rng_for
from vbp.scenario import load_scenario
from vbp.strategies import CostDistribution

DATA = Path(__file__).parent / "data"
DIST = CostDistribution(median=0.1, sigma=0.8)


@pytest.fixture(scope="module")
def tiny():
    return load_scenario(DATA / "tiny.toml")


def _pool(firms: int, seed: int = 0) -> FirmPool:
    rng = np.random.default_rng(seed)
    return FirmPool(home=np.zeros(firms, dtype=int), size=np.full(firms, 1 / firms),
                    efficiency=rng.standard_normal(firms))


def test_no_firm_share_is_plain_inversion():
    u = np.random.default_rng(1).random(50)
    firm = np.arange(50)
    np.testing.assert_array_equal(firm_costs(DIST, u, firm, _pool(50), 0.0), DIST.ppf(u))


def test_firm_share_keeps_each_products_cost_distribution():
    """The copula moves costs between firms, not the distribution: costs still follow G."""
    rng = np.random.default_rng(2)
    n = 4000
    firm = np.arange(n)  # one product per firm: efficiencies are independent draws
    cost = firm_costs(DIST, rng.random(n), firm, _pool(n, 3), 0.7)
    assert stats.kstest(DIST.cdf(cost), "uniform").pvalue > 0.01


def test_firm_share_correlates_a_firms_products():
    rng = np.random.default_rng(4)
    firms = 3000
    pool = _pool(firms, 5)
    firm = np.arange(firms)
    a = np.log(firm_costs(DIST, rng.random(firms), firm, pool, 0.6))
    b = np.log(firm_costs(DIST, rng.random(firms), firm, pool, 0.6))
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(0.6, abs=0.05)
    c = np.log(firm_costs(DIST, rng.random(firms), firm, pool, 0.0))
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.06


def test_cost_levels_are_a_three_point_normal():
    u = np.array([0.0, 0.1, 1 / 6, 0.5, 0.8, 5 / 6, 0.99])
    z = cost_level_z(u)
    r3 = np.sqrt(3.0)
    np.testing.assert_array_equal(z, [-r3, -r3, 0, 0, 0, r3, r3])
    p = np.array([1 / 6, 2 / 3, 1 / 6])
    nodes = np.array([-r3, 0.0, r3])
    assert float(p @ nodes) == pytest.approx(0.0)
    assert float(p @ nodes**2) == pytest.approx(1.0)
    assert float(p @ nodes**4) == pytest.approx(3.0)  # as a standard normal


def _units(scenario, tau: float, share: float = 0.0):
    agents = scenario.agents.model_copy(update={"cost_tau_drug": tau, "cost_firm_share_drug": share})
    pool = make_firm_pool(agents, rng_for(9, 0, "firms"))
    rnd = next(r for r in scenario.rounds if r.category == "drug")
    return generate_units(rnd, agents, scenario.market, pool, rng_for(9, 0, "market", rnd.id))


def test_cost_level_changes_nothing_but_costs(tiny):
    flat, tilted = _units(tiny, 0.0), _units(tiny, 0.8)
    assert all(u.cost_scale == 1.0 for u in flat)
    levels = {round(u.cost_scale, 9) for u in tilted}
    assert levels <= {round(np.exp(-0.8 * np.sqrt(3)), 9), 1.0, round(np.exp(0.8 * np.sqrt(3)), 9)}
    assert len(levels) > 1
    for a, b in zip(flat, tilted):
        np.testing.assert_allclose(b.cost, a.cost * b.cost_scale)
        np.testing.assert_allclose(b.reserve - b.cost, a.reserve - a.cost, atol=1e-12)  # the brand margin is not scaled
        np.testing.assert_array_equal(a.firm, b.firm)
        np.testing.assert_array_equal(a.capacity, b.capacity)
        assert (a.demand, a.ceiling, a.norm_price) == (b.demand, b.ceiling, b.norm_price)


def test_bidders_plan_for_their_molecules_cost_level(tiny):
    """Bids depend on costs relative to the cost level: a molecule at level s bids exactly as one at
    level 1 whose reference price is s times higher and whose ceiling is the same in yuan."""
    agents = tiny.agents.model_copy(update={"strategy": "equilibrium", "equilibrium_iterations": 4,
                                            "equilibrium_samples": 64})
    scenario = tiny.model_copy(update={"agents": agents})
    sim = Simulation(scenario, 9, 0)
    rnd = next(r for r in tiny.rounds if r.category == "drug")
    rb = scenario.rulebook(rnd.rulebook)
    u = next(u for u in _units(tiny, 0.0) if u.n >= 3)
    s = 0.5
    low = dataclasses.replace(u, cost=u.cost * s, reserve=u.reserve * s, cost_scale=s)
    twin = dataclasses.replace(low, norm_price=u.norm_price * s, cost_scale=1.0)
    np.testing.assert_allclose(sim._bids(rnd, rb, low), sim._bids(rnd, rb, twin))
    assert not np.allclose(sim._bids(rnd, rb, low), sim._bids(rnd, rb, u) * s)  # the ceiling is not scaled


def test_expansion_molecules_keep_the_pilots_cost_level():
    """A round capped by an earlier round's prices sells the same medicines: same cost levels."""
    scenario = load_scenario("national-history", ["agents.strategy=cost_plus", "agents.cost_tau_drug=0.8"])
    rounds = {r.id: r for r in scenario.rounds}
    sim = Simulation(scenario, 3, 0)
    pilot = sim.award_round(rounds["pilot"], sim.open_round(rounds["pilot"]))
    levels = [a.unit.cost_scale for a in pilot if a.procured]
    assert len(set(levels)) > 1
    expansion = sim.open_round(rounds["expansion"])
    for u in expansion:
        if u.index < len(levels):
            assert u.cost_scale == levels[u.index]
            assert u.ceiling <= sim.prices["pilot"][sorted(sim.prices["pilot"])[u.index]][0] * u.norm_price + 1e-9
