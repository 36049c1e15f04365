"""Tests of vbp.learning: margin bids, foregone payoffs and the Hedge learner."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbp.learning import HedgeLearner, foregone_payoffs, margin_bids, margin_grid
from vbp.rules import Rulebook, award_fractions

NAN = math.nan
PILOT = Rulebook("pilot", "single_winner", volume_shares=(0.65,), pre_award_max_bidders=2)


def lowest_wins(bids: np.ndarray, cap: float = 1.0, calls: list | None = None) -> np.ndarray:
    """Plain award rule: the lowest valid bid (finite, <= cap) takes the whole unit; ties to the lower index."""
    if calls is not None:
        calls.append(bids.shape)
    out = np.zeros_like(bids)
    for s, row in enumerate(bids):
        valid = [i for i, b in enumerate(row) if np.isfinite(b) and b <= cap]
        if valid:
            out[s, min(valid, key=lambda i: (row[i], i))] = 1.0
    return out


# ---------------------------------------------------------------- margin grid and bids


def test_margin_grid_known_values_and_validation():
    np.testing.assert_allclose(margin_grid(5), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert margin_grid(2).tolist() == [0.0, 1.0]
    for bad in (1, 0, 2.5, True, "3"):
        with pytest.raises(ValueError, match="size"):
            margin_grid(bad)


def test_margin_bids_endpoints_broadcast_and_nan_rule():
    reserve = np.array([0.2, 0.5, 1.0, 1.3, NAN])
    out = margin_bids(np.array([0.0, 0.5, 1.0]), reserve, 1.0)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out[:3], [[0.2, 0.6, 1.0], [0.5, 0.75, 1.0], [1.0, 1.0, 1.0]])
    assert np.isnan(out[3:]).all()  # reserve above the cap, or missing: cannot bid
    np.testing.assert_allclose(margin_bids(0.0, reserve[:2], 1.0), reserve[:2])  # theta 0 bids the reserve
    np.testing.assert_allclose(margin_bids(1.0, reserve[:3], 1.0), 1.0)  # theta 1 bids the cap
    assert margin_bids(0.25, np.array([0.2]), 0.6).tolist() == pytest.approx([0.3])


def test_margin_bids_rejects_bad_cap_and_theta():
    with pytest.raises(ValueError, match="cap"):
        margin_bids(0.5, np.array([0.2]), 0.0)
    with pytest.raises(ValueError, match="cap"):
        margin_bids(0.5, np.array([0.2]), math.inf)
    with pytest.raises(ValueError, match="theta"):
        margin_bids(np.array([0.0, 1.5]), np.array([0.2]), 1.0)


# ---------------------------------------------------------------- foregone payoffs


def test_single_bidder_best_arm_is_the_cap():
    theta = margin_grid(11)
    reserve, cost, cap = np.array([0.3]), np.array([0.25]), 0.9
    fn = functools.partial(award_fractions, PILOT, ceiling=cap)
    pay = foregone_payoffs(fn, np.array([0.5]), reserve, cost, cap, theta)
    assert pay.shape == (1, 11)
    np.testing.assert_allclose(pay[0], (margin_bids(theta, reserve, cap)[0] - 0.25) * 0.65)
    assert int(np.argmax(pay[0])) == 10


def test_two_bidders_lowest_price_wins_by_hand():
    calls: list = []
    fn = functools.partial(lowest_wins, calls=calls)
    theta = np.array([0.0, 0.5, 1.0])
    reserve, cost = np.array([0.2, 0.5]), np.array([0.2, 0.4])
    pay = foregone_payoffs(fn, np.array([0.6, 0.7]), reserve, cost, 1.0, theta)
    # Bidder 0 tries 0.2, 0.6, 1.0 against 0.7: wins the first two (margin 0 and 0.4).
    # Bidder 1 tries 0.5, 0.75, 1.0 against 0.6: wins only at 0.5 (margin 0.1).
    np.testing.assert_allclose(pay, [[0.0, 0.4, 0.0], [0.1, 0.0, 0.0]])
    assert calls == [(6, 2)]  # one vectorised call on (n*K, n)
    # A rival that did not bid: bidder 1 wins at every grid point.
    pay = foregone_payoffs(lowest_wins, np.array([NAN, 0.7]), reserve, cost, 1.0, theta)
    np.testing.assert_allclose(pay[1], [0.1, 0.35, 0.6])


def test_bidder_above_cap_gets_zero_row_and_others_ignore_it():
    theta = margin_grid(3)
    reserve, cost = np.array([1.2, 0.5]), np.array([1.1, 0.4])
    pay = foregone_payoffs(lowest_wins, np.array([NAN, 0.7]), reserve, cost, 1.0, theta)
    assert pay[0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(pay[1], [0.1, 0.35, 0.6])


def test_foregone_payoffs_input_checks():
    theta = margin_grid(3)
    with pytest.raises(ValueError, match="reserve"):
        foregone_payoffs(lowest_wins, np.array([0.5, 0.6]), np.array([0.1]), np.array([0.1, 0.1]), 1.0, theta)
    with pytest.raises(ValueError, match="award_fn"):
        foregone_payoffs(lambda b: b[:1], np.array([0.5]), np.array([0.1]), np.array([0.1]), 1.0, theta)
    assert foregone_payoffs(lowest_wins, np.zeros(0), np.zeros(0), np.zeros(0), 1.0, theta).shape == (0, 3)


@pytest.fixture(scope="module")
def batch_rulebook() -> Rulebook:
    from vbp.scenario import load_scenario

    rb = load_scenario("national-history").rulebook("batch4_9")
    assert rb.kind == "multi_winner"
    return rb


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_real_multi_winner_rulebook_shape_nonnegative_and_consistent(batch_rulebook, n, seed):
    rng = np.random.default_rng(seed)
    cap = 1.0
    cost = rng.uniform(0.05, 1.1, n)
    reserve = cost * rng.choice([1.0, 1.2], n)
    theta = margin_grid(6)
    k = rng.integers(0, 6, n)
    own = margin_bids(theta, reserve, cap)
    bids = own[np.arange(n), k]  # every bidder on a grid point (nan if it cannot bid)
    fn = functools.partial(award_fractions, batch_rulebook, ceiling=cap)
    pay = foregone_payoffs(fn, bids, reserve, cost, cap, theta)
    assert pay.shape == (n, 6)
    assert np.all(np.isfinite(pay)) and np.all(pay >= 0)
    assert np.all(pay[reserve > cap] == 0)
    # The grid point actually bid earns what the award gave.
    actual = (bids - cost) * fn(bids[None, :])[0]
    ok = np.isfinite(bids)
    np.testing.assert_allclose(pay[np.arange(n), k][ok], actual[ok], atol=1e-12)


# ---------------------------------------------------------------- learner


def test_unseen_firm_is_uniform_and_not_stored():
    h = HedgeLearner(grid_size=5)
    np.testing.assert_allclose(h.probabilities(3, "drug"), np.full(5, 0.2))
    assert h.mean_theta(3, "drug") == pytest.approx(0.5)
    assert h.snapshot() == {}
    h.choose(np.array([3]), "drug", np.random.default_rng(0))
    assert h.snapshot() == {}


def test_repeated_fixed_row_concentrates_on_its_argmax():
    h = HedgeLearner(grid_size=5, rate=2.0, memory=0.9)
    row = np.array([[0.1, 0.3, 0.6, 0.5, 0.0]])
    for _ in range(60):
        h.update(np.array([7]), "drug", row)
    p = h.probabilities(7, "drug")
    assert int(np.argmax(p)) == 2 and p[2] > 0.85
    assert h.mean_theta(7, "drug") == pytest.approx(float(p @ h.theta))
    assert h.probabilities(7, "stent").tolist() == pytest.approx([0.2] * 5)  # categories are separate
    h1 = HedgeLearner(grid_size=5, rate=2.0, memory=1.0)
    for _ in range(60):
        h1.update(np.array([7]), "drug", row)
    assert h1.probabilities(7, "drug")[2] > 0.999


def test_memory_forgets_after_the_pattern_switches():
    old, new = np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0]])

    def switch_steps(memory: float, limit: int) -> int | None:
        h = HedgeLearner(grid_size=3, rate=1.0, memory=memory)
        for _ in range(100):
            h.update([0], "drug", old)
        for t in range(1, limit + 1):
            h.update([0], "drug", new)
            if int(np.argmax(h.probabilities(0, "drug"))) == 2:
                return t
        return None

    # memory^t < 1/2 first at t = 4 for memory 0.8 (steady state: L_old - L_new = rate / (1 - memory))
    assert switch_steps(0.8, 10) == 4
    assert switch_steps(1.0, 10) is None  # perfect recall: 100 old updates outweigh 10 new ones


def test_rate_zero_stays_uniform():
    h = HedgeLearner(grid_size=4, rate=0.0)
    h.update(np.array([1, 2]), "joint", np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 2.0, 1.0]]))
    for f in (1, 2):
        np.testing.assert_allclose(h.probabilities(f, "joint"), np.full(4, 0.25))


def test_uninformative_rows_are_skipped():
    h = HedgeLearner(grid_size=3)
    h.update(np.array([1, 2]), "drug", np.array([[0.0, 0.0, 0.0], [-1.0, -0.5, 0.0]]))
    assert h.snapshot() == {}
    h.update(np.array([1]), "drug", np.array([[0.0, 1.0, 0.0]]))
    before = h.probabilities(1, "drug")
    h.update(np.array([1]), "drug", np.zeros((1, 3)))  # no decay either
    np.testing.assert_array_equal(h.probabilities(1, "drug"), before)


def test_several_rows_of_one_firm_apply_in_order_and_scale_free():
    rows = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, 1.0], [3.0, 3.0, 0.0]])
    a, b = HedgeLearner(grid_size=3, memory=0.7), HedgeLearner(grid_size=3, memory=0.7)
    a.update(np.array([4, 4, 4]), "drug", rows)
    for r in rows:
        b.update(np.array([4]), "drug", 1e6 * r[None, :])  # rows are scaled by their maximum
    np.testing.assert_allclose(a.probabilities(4, "drug"), b.probabilities(4, "drug"), rtol=1e-12)
    # Order matters under memory < 1: the reversed order gives other weights.
    c = HedgeLearner(grid_size=3, memory=0.7)
    c.update(np.array([4, 4, 4]), "drug", rows[::-1])
    assert not np.allclose(a.probabilities(4, "drug"), c.probabilities(4, "drug"))
    # Hand computation of the first row alone: L = 0.7 * log(1/3) + 2 * (1, 0, 0.5).
    d = HedgeLearner(grid_size=3, memory=0.7)
    d.update(np.array([4]), "drug", rows[:1])
    w = np.exp(2.0 * np.array([1.0, 0.0, 0.5]))
    np.testing.assert_allclose(d.probabilities(4, "drug"), w / w.sum())


def test_choose_reproducible_and_independent_of_insertion_order():
    firms = np.array([5, 1, 3, 1])
    rows = np.array([[0.0, 1.0, 0.2, 0.0], [1.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.3, 1.0]])
    a, b = HedgeLearner(grid_size=4), HedgeLearner(grid_size=4)
    a.update(np.array([5, 1, 3]), "drug", rows)
    b.update(np.array([3]), "drug", rows[2:])
    b.update(np.array([1]), "drug", rows[1:2])
    b.update(np.array([5]), "drug", rows[:1])
    x = a.choose(firms, "drug", np.random.default_rng(42))
    y = b.choose(firms, "drug", np.random.default_rng(42))
    np.testing.assert_array_equal(x, y)
    # Exactly one rng.random(n) call is consumed.
    rng, ref = np.random.default_rng(7), np.random.default_rng(7)
    a.choose(firms, "drug", rng)
    ref.random(firms.size)
    assert rng.random() == ref.random()


def test_choose_follows_the_probabilities():
    h = HedgeLearner(grid_size=4, rate=3.0, memory=1.0)
    h.update(np.array([0]), "drug", np.array([[0.0, 0.0, 1.0, 0.0]]))
    p = h.probabilities(0, "drug")
    picks = h.choose(np.zeros(20000, dtype=int), "drug", np.random.default_rng(3))
    freq = np.bincount(picks, minlength=4) / picks.size
    np.testing.assert_allclose(freq, p, atol=0.015)
    uniform = h.choose(np.arange(1, 8001), "drug", np.random.default_rng(4))
    np.testing.assert_allclose(np.bincount(uniform, minlength=4) / 8000, 0.25, atol=0.02)
    # Concentrated weights (arms with probability 0) are never picked.
    c = HedgeLearner(grid_size=3, rate=50.0, memory=1.0)
    for _ in range(40):
        c.update(np.array([0]), "drug", np.array([[0.0, 0.0, 1.0]]))
    assert c.probabilities(0, "drug")[0] == 0.0
    assert set(c.choose(np.zeros(1000, dtype=int), "drug", np.random.default_rng(5)).tolist()) == {2}


def test_update_rejects_bad_payoffs():
    h = HedgeLearner(grid_size=3)
    with pytest.raises(ValueError, match="shape"):
        h.update(np.array([1, 2]), "drug", np.zeros((1, 3)))
    with pytest.raises(ValueError, match="finite"):
        h.update(np.array([1]), "drug", np.array([[NAN, 1.0, 0.0]]))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(grid_size=1), "grid_size.*1"),
        (dict(grid_size=3.0), "grid_size.*3.0"),
        (dict(grid_size=True), "grid_size.*True"),
        (dict(rate=-0.5), "rate.*-0.5"),
        (dict(rate=math.inf), "rate.*inf"),
        (dict(rate=NAN), "rate.*nan"),
        (dict(memory=0.0), "memory.*0.0"),
        (dict(memory=1.5), "memory.*1.5"),
        (dict(memory=NAN), "memory.*nan"),
    ],
)
def test_constructor_validation_names_argument_and_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        HedgeLearner(**kwargs)


rows_st = st.lists(
    st.lists(st.floats(0.0, 1e6, allow_subnormal=False), min_size=5, max_size=5), min_size=1, max_size=30
)


@settings(max_examples=60, deadline=None)
@given(
    rows=rows_st,
    rate=st.floats(0.0, 200.0),
    memory=st.floats(0.01, 1.0),
    firm_ids=st.lists(st.integers(0, 3), min_size=30, max_size=30),
    seed=st.integers(0, 2**32 - 1),
)
def test_probabilities_stay_a_distribution(rows, rate, memory, firm_ids, seed):
    h = HedgeLearner(grid_size=5, rate=rate, memory=memory)
    firms = np.array(firm_ids[: len(rows)])
    h.update(firms, "drug", np.array(rows))
    for f in range(4):
        p = h.probabilities(f, "drug")
        assert np.all(np.isfinite(p)) and np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert 0.0 <= h.mean_theta(f, "drug") <= 1.0
    picks = h.choose(np.array(firm_ids), "drug", np.random.default_rng(seed))
    assert picks.shape == (30,) and np.all((picks >= 0) & (picks < 5))
    for (f, _), p in h.snapshot().items():
        assert p[picks[np.array(firm_ids) == f]].min() > 0  # only arms with positive probability
