"""Tests for vbp.strategies: cost models, cost-plus and equilibrium bidding."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.stats import binom

from vbp.strategies import (
    STRATEGIES,
    BidContext,
    CostDistribution,
    CostPlus,
    Equilibrium,
    UniformCost,
    clear_cache,
    make_strategy,
)

# --------------------------------------------------------------------------- award rules


def single_winner(bids: np.ndarray) -> np.ndarray:
    """Lowest bid wins volume 1 (ties split); nan = no bid."""
    b = np.where(np.isnan(bids), np.inf, bids)
    win = (b == b.min(axis=1, keepdims=True)) & np.isfinite(b)
    return win / np.maximum(win.sum(axis=1, keepdims=True), 1)


def safe_harbour(bids: np.ndarray, ceiling: float) -> np.ndarray:
    """Everyone bidding <= 0.5*ceiling wins 1/k; if nobody does, the lowest bid wins."""
    b = np.where(np.isnan(bids), np.inf, bids)
    safe = b <= 0.5 * ceiling
    lowest = (b == b.min(axis=1, keepdims=True)) & np.isfinite(b)
    win = np.where(safe.any(axis=1, keepdims=True), safe, lowest)
    return win / np.maximum(win.sum(axis=1, keepdims=True), 1)


def lowest_k(bids: np.ndarray, k: int) -> np.ndarray:
    """The k lowest bids win 1/k each (ties by column order); nan = no bid."""
    b = np.where(np.isnan(bids), np.inf, bids)
    rank = np.argsort(np.argsort(b, axis=1, kind="stable"), axis=1)
    return ((rank < k) & np.isfinite(b)) / k


def single_ctx(n: int, costs, ceiling: float = 1.0, cap: bool = True) -> BidContext:
    return BidContext(n, ceiling, single_winner, "single", costs, ceiling_is_cap=cap)


def harbour_ctx(n: int, costs, ceiling: float = 1.0) -> BidContext:
    award = functools.partial(safe_harbour, ceiling=ceiling)
    return BidContext(n, ceiling, award, ("harbour", ceiling), costs)


def closed_form(dist, n: int, top: float):
    """b(c) = c + int_c^top (1 - F)^(n-1) dt / (1 - F(c))^(n-1): one winner, reserve `top`."""

    def surv(t: float) -> float:
        return 1.0 - float(dist.cdf(np.array([t]))[0])

    def bid(c: float) -> float:
        return c + quad(lambda t: surv(t) ** (n - 1), c, top, limit=200)[0] / surv(c) ** (n - 1)

    return bid


def interior_errors(dist, n: int, ceiling: float) -> np.ndarray:
    """|numerical - closed form| at grid costs that win with probability >= 5%.

    Below that the sampled volume rests on few draws and the bid barely matters.
    """
    ctx = single_ctx(n, dist, ceiling)
    bf = Equilibrium().bid_function(ctx)
    top = min(ctx.bid_cap, dist.upper)
    win = (1.0 - dist.cdf(bf.costs)) ** (n - 1)
    keep = (win >= 0.05) & (bf.costs < top)
    exact = closed_form(dist, n, top)
    return np.array([abs(b - exact(c)) for c, b in zip(bf.costs[keep], bf.bids[keep])])


LOGNORMAL = CostDistribution(median=0.5, sigma=0.4, upper=1.5)

# Tolerance: over ten seeds the worst mean error is 0.0054 and the worst single error 0.027
# (n = 2, 3, 5); the error comes from 512 sampled rival profiles. 0.01 / 0.04 leaves margin
# while a bid function off by one 48-point grid step in cost (~0.02) on average would fail.
MAE, MAX_ERR = 0.01, 0.04

# --------------------------------------------------------------------------- cost models


def test_cost_distribution_validates_with_field_and_value():
    with pytest.raises(ValueError, match=r"median.*-0\.1"):
        CostDistribution(median=-0.1, sigma=0.3)
    with pytest.raises(ValueError, match=r"sigma.*0"):
        CostDistribution(median=0.5, sigma=0.0)
    with pytest.raises(ValueError, match="upper"):
        CostDistribution(median=0.5, sigma=0.3, upper=float("nan"))
    with pytest.raises(ValueError, match="upper"):
        CostDistribution(median=100.0, sigma=0.01, upper=1.0)  # no mass below upper
    with pytest.raises(ValueError, match="low"):
        UniformCost(0.5, 0.5)


def test_lognormal_known_values():
    wide = CostDistribution(median=0.4, sigma=0.5, upper=1e6)  # truncation negligible
    assert wide.ppf(np.array([0.5]))[0] == pytest.approx(0.4)
    assert wide.cdf(np.array([0.4 * np.exp(0.5)]))[0] == pytest.approx(0.8413447, abs=1e-6)
    assert LOGNORMAL.ppf(np.array([1.0]))[0] == pytest.approx(1.5)
    assert LOGNORMAL.cdf(np.array([1.5, 2.0, 0.0])).tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_samples_respect_truncation_and_are_reproducible():
    a = LOGNORMAL.sample(np.random.default_rng(7), 5000)
    b = LOGNORMAL.sample(np.random.default_rng(7), 5000)
    assert np.array_equal(a, b)
    assert a.max() <= 1.5 and a.min() > 0
    assert np.median(a) == pytest.approx(0.5, rel=0.05)


@settings(max_examples=40, deadline=None)
@given(
    u=st.floats(0.0, 1.0),
    median=st.floats(0.05, 2.0),
    sigma=st.floats(0.05, 1.5),
    stretch=st.floats(1.0, 10.0),
)
def test_ppf_inverts_cdf(u, median, sigma, stretch):
    upper = median * stretch
    dist = CostDistribution(median, sigma, upper)
    x = dist.ppf(np.array([u]))
    assert 0.0 <= x[0] <= upper
    assert dist.cdf(x)[0] == pytest.approx(u, abs=1e-9)


# --------------------------------------------------------------------------- context, registry


def test_bid_context_validation():
    with pytest.raises(ValueError, match="n_bidders"):
        single_ctx(0, UniformCost())
    with pytest.raises(ValueError, match="ceiling"):
        single_ctx(3, UniformCost(), ceiling=-1.0)
    with pytest.raises(ValueError, match="hashable"):
        BidContext(3, 1.0, single_winner, ["unhashable"], UniformCost())
    with pytest.raises(ValueError, match="costs"):
        BidContext(3, 1.0, single_winner, "k", object())


def test_registry_and_make_strategy():
    assert set(STRATEGIES) == {"cost_plus", "equilibrium"}
    s = make_strategy("cost_plus", markup=0.3)
    assert isinstance(s, CostPlus) and s.markup == 0.3 and s.name == "cost_plus"
    assert make_strategy("equilibrium", grid=16).grid == 16
    with pytest.raises(ValueError, match="cost_plus, equilibrium"):
        make_strategy("adaptive")
    with pytest.raises(ValueError, match="markup"):
        make_strategy("cost_plus", margin=0.1)
    with pytest.raises(ValueError, match="damping"):
        Equilibrium(damping=1.0)
    with pytest.raises(ValueError, match="markup"):
        CostPlus(markup=-0.1)


# --------------------------------------------------------------------------- cost-plus


def test_cost_plus_known_answers():
    costs = np.array([0.5, 0.9, 1.0, 1.1, np.nan])
    capped = CostPlus(0.2).bids(costs, single_ctx(5, UniformCost()))
    assert capped[:3] == pytest.approx([0.6, 1.0, 1.0])
    assert np.isnan(capped[3:]).all()
    free = CostPlus(0.2).bids(costs, single_ctx(5, UniformCost(0, 2), cap=False))
    assert free[:4] == pytest.approx([0.6, 1.08, 1.2, 1.32])
    with pytest.raises(ValueError, match="costs"):
        CostPlus(0.2).bids(np.array([-0.1]), single_ctx(5, UniformCost()))


# --------------------------------------------------------------------------- equilibrium


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("ceiling", [1.0, 1.5])
def test_equilibrium_matches_uniform_closed_form(n, ceiling):
    """Uniform [0, 1] costs, one winner: b(c) = c + (1 - c)/n, also with a slack ceiling."""
    ctx = single_ctx(n, UniformCost(0.0, 1.0), ceiling)
    bf = Equilibrium().bid_function(ctx)
    assert bf.converged and bf.iterations <= 3  # the envelope step lands on it at once
    keep = (1.0 - bf.costs) ** (n - 1) >= 0.05
    keep[-1] = False
    err = np.abs(bf.bids[keep] - (bf.costs[keep] + (1.0 - bf.costs[keep]) / n))
    assert err.mean() < MAE and err.max() < MAX_ERR


@pytest.mark.parametrize(("n", "ceiling"), [(2, 1.0), (3, 1.0), (5, 1.0), (3, 2.0)])
def test_equilibrium_matches_general_closed_form_lognormal(n, ceiling):
    """Lognormal costs; ceiling 1.0 binds (firms above it stay out), 2.0 is above every cost."""
    err = interior_errors(LOGNORMAL, n, ceiling)
    assert err.size >= 10
    assert err.mean() < MAE and err.max() < MAX_ERR


def test_equilibrium_matches_multi_winner_closed_form():
    """The 3 lowest of 6 win 1/3 each: by revenue equivalence b(c) = c + int_c^1 Q / Q(c)
    with Q(c) = P(at most 2 of 5 uniform rivals below c) / 3."""
    ctx = BidContext(6, 1.0, functools.partial(lowest_k, k=3), ("lowest", 3), UniformCost())
    bf = Equilibrium().bid_function(ctx)

    def q(c: float) -> float:
        return sum(binom.pmf(j, 5, c) for j in range(3)) / 3

    keep = np.array([q(c) >= 0.05 / 3 for c in bf.costs]) & (bf.costs < 1.0)
    exact = [c + quad(q, c, 1.0)[0] / q(c) for c in bf.costs[keep]]
    err = np.abs(bf.bids[keep] - exact)
    assert err.mean() < MAE and err.max() < MAX_ERR


def test_unlikely_winners_keep_their_markup():
    """Costs that rarely win (few sampled wins) still follow c + (1 - c)/n, via the tail law."""
    bf = Equilibrium().bid_function(single_ctx(8, UniformCost()))
    keep = (bf.costs > 0.0) & (bf.costs < 0.97)
    err = np.abs(bf.bids[keep] - (bf.costs[keep] + (1.0 - bf.costs[keep]) / 8))
    assert err.mean() < 0.015


def test_more_bidders_bid_lower():
    costs = np.linspace(0.0, 0.99, 100)
    for dist in (UniformCost(), LOGNORMAL):
        bids = [Equilibrium().bids(costs, single_ctx(n, dist)) for n in (2, 3, 5, 10)]
        for fewer, more in zip(bids, bids[1:]):
            assert np.all(more <= fewer + 1e-3)
        assert np.all(bids[-1][:50] < bids[0][:50] - 0.05)  # and clearly so at low cost


def test_safe_harbour_creates_mass_point():
    """If every bid <= 0.5*ceiling wins, low-cost firms pool exactly at it."""
    for ceiling, dist in ((1.0, UniformCost()), (0.8, LOGNORMAL)):
        ctx = harbour_ctx(5, dist, ceiling)
        bf = Equilibrium().bid_function(ctx)
        assert bf.converged
        low = Equilibrium().bids(np.linspace(0.0, 0.3 * ceiling, 20), ctx)
        assert np.all(low == 0.5 * ceiling)
        above = Equilibrium().bids(np.array([0.6 * ceiling]), ctx)
        assert above[0] > 0.6 * ceiling
    # without the harbour the same firms bid below and apart
    plain = Equilibrium().bids(np.array([0.0, 0.2]), single_ctx(5, UniformCost()))
    assert plain[0] < 0.25 and plain[1] - plain[0] > 0.1


def test_safe_harbour_bid_function_is_an_approximate_equilibrium():
    """On fresh rival draws no cost type gains more than 1% of the top profit by deviating."""
    ctx = harbour_ctx(5, UniformCost())
    bf = Equilibrium().bid_function(ctx)
    rng = np.random.default_rng(123)
    rival_bids = bf(rng.random((2048, 4)))
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 101), bf.bids]))
    rows = np.empty((grid.size * 2048, 5))
    rows[:, 0] = np.repeat(grid, 2048)
    rows[:, 1:] = np.tile(rival_bids, (grid.size, 1))
    vol = ctx.award_fn(rows)[:, 0].reshape(grid.size, 2048).mean(axis=1)
    profit = (grid[None, :] - bf.costs[:, None]) * vol[None, :]
    profit[grid[None, :] < bf.costs[:, None]] = 0.0
    on_path = (bf.bids - bf.costs) * np.interp(bf.bids, grid, vol)
    assert np.max(profit.max(axis=1) - on_path) < 0.01 * profit.max()


def test_single_bidder_bids_the_ceiling():
    bids = Equilibrium().bids(np.array([0.1, 0.7]), single_ctx(1, LOGNORMAL, 0.9))
    assert bids == pytest.approx([0.9, 0.9])


def test_equilibrium_needs_a_valid_award_fn():
    with pytest.raises(ValueError, match="award_fn"):
        Equilibrium().bid_function(BidContext(3, 1.0, None, "none", UniformCost()))
    bad = BidContext(3, 1.0, lambda b: b[:, :1], "bad", UniformCost())
    with pytest.raises(ValueError, match="shape"):
        Equilibrium().bid_function(bad)


FOCAL_RULES = {
    "multi_winner": dict(max_winners=(1, 2, 2, 3, 4, 4, 5, 6), gate_ratio=1.8, safe_harbour_cut=0.5,
                         volume_shares=(0.5, 0.6, 0.7, 0.8)),
    "stent": dict(max_winners=(10,), gate_ratio=1.8, win_below_ceiling=True, shortlist=10, ceiling_is_cap=False),
    "joint": dict(max_winners=(1, 2, 3, 3, 4), gate_ratio=1.8, rank_volume=(1.0, 0.9, 0.85, 0.8),
                  rank_release=(0.0, 0.0, 0.05, 0.1), remainder_excludes_highest=True),
    "insulin": dict(max_winners=(100,), tier_ratio=1.3, tier_b_cut=0.4, tier_volumes=(1.0, 0.8, 0.55, 0.45),
                    tier_pool_to_a=True),
}


@pytest.mark.parametrize("kind", FOCAL_RULES)
def test_the_focal_fast_path_solves_the_same_bid_function_bit_for_bit(kind):
    """A BidContext's focal_fn replaces the stacked award_fn call; the bid-function cache does
    not tell the two apart, so the solve must not either."""
    from vbp.rules import Rulebook, award_fractions, focal_fractions

    rb = Rulebook(kind, kind, **FOCAL_RULES[kind])
    eq = Equilibrium(grid=24, samples=256)
    for n in (2, 5, 9):
        kw = dict(n_bidders=n, ceiling=0.9, award_key=(kind, n), costs=LOGNORMAL, ceiling_is_cap=rb.ceiling_is_cap)
        slow = BidContext(award_fn=functools.partial(award_fractions, rb, ceiling=0.9), **kw)
        fast = BidContext(award_fn=slow.award_fn, focal_fn=functools.partial(focal_fractions, rb, ceiling=0.9),
                          **kw)
        clear_cache()
        a = eq.bid_function(slow)
        clear_cache()
        b = eq.bid_function(fast)
        assert a is not b
        assert np.array_equal(a.bids, b.bids) and np.array_equal(a.costs, b.costs)
        assert (a.iterations, a.max_change) == (b.iterations, b.max_change)
    clear_cache()
    bad = BidContext(3, 1.0, single_winner, "bad-focal", UniformCost(), focal_fn=lambda x, r: r)
    with pytest.raises(ValueError, match="focal_fn returned shape"):
        Equilibrium().bid_function(bad)


def test_determinism_and_cache():
    ctx = harbour_ctx(4, LOGNORMAL, 0.9)
    eq = Equilibrium(grid=24, samples=256)
    clear_cache()
    first = eq.bid_function(ctx)
    assert eq.bid_function(ctx) is first  # cache hit
    assert Equilibrium(grid=24, samples=256).bid_function(ctx) is first  # equal parameters
    clear_cache()
    again = eq.bid_function(ctx)
    assert again is not first
    assert np.array_equal(again.bids, first.bids) and np.array_equal(again.costs, first.costs)
    other = Equilibrium(grid=24, samples=256, seed=1).bid_function(ctx)
    assert not np.array_equal(other.bids, first.bids)
    with pytest.raises(ValueError):
        first.bids[0] = 0.0  # cached arrays are read-only


def test_the_disk_cache_is_keyed_by_the_solver_source(monkeypatch, tmp_path):
    """A bid function solved by one version of the solver or the award rules is not read back by
    another: the disk path carries a digest of their source."""
    from vbp import strategies

    monkeypatch.setenv("VBP_CACHE_DIR", str(tmp_path))
    ctx = harbour_ctx(4, LOGNORMAL, 0.9)
    eq = Equilibrium(grid=24, samples=256)
    clear_cache()
    first = eq.bid_function(ctx)
    stored = list(tmp_path.rglob("*.npz"))
    assert len(stored) == 1 and strategies.solver_digest() in stored[0].parts
    with np.load(stored[0]) as z:  # mark the entry on disk, keeping its key
        marked = {k: z[k] for k in z.files}
    marked["bids"] = np.full_like(marked["bids"], 0.5)
    np.savez(stored[0], **marked)
    clear_cache()
    assert np.all(eq.bid_function(ctx).bids == 0.5)  # the same code reads the entry back

    monkeypatch.setattr(strategies, "solver_digest", lambda: "edited-solver")
    clear_cache()
    again = eq.bid_function(ctx)  # other code does not: it solves afresh
    assert np.array_equal(again.bids, first.bids)
    assert len(list((tmp_path / "bidfn-v1" / "edited-solver").rglob("*.npz"))) == 1


# --------------------------------------------------------------------------- invariants

CONTEXTS = [
    single_ctx(3, UniformCost()),
    single_ctx(6, LOGNORMAL, 0.8),
    single_ctx(4, LOGNORMAL, 0.8, cap=False),
    harbour_ctx(5, LOGNORMAL, 0.9),
]
STRATS = [CostPlus(0.0), CostPlus(0.35), Equilibrium()]


@settings(max_examples=60, deadline=None)
@given(
    ctx_i=st.integers(0, len(CONTEXTS) - 1),
    strat_i=st.integers(0, len(STRATS) - 1),
    costs=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=12),
)
def test_bids_respect_cost_ceiling_and_order(ctx_i, strat_i, costs):
    ctx, strategy = CONTEXTS[ctx_i], STRATS[strat_i]
    c = np.sort(np.array(costs))
    b = strategy.bids(c, ctx)
    assert b.shape == c.shape
    out = ctx.ceiling_is_cap & (c > ctx.ceiling)
    assert np.isnan(b[out]).all() and not np.isnan(b[~out]).any()
    assert np.all(b[~out] >= c[~out])
    if ctx.ceiling_is_cap:
        assert np.all(b[~out] <= ctx.ceiling)
    assert np.all(np.diff(b[~out]) >= 0)  # non-decreasing in cost
