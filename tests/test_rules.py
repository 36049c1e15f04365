"""Tests of vbp.rules: known answers from the published rule tables, and invariants."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbp.rules import (
    RULEBOOK_KINDS,
    Award,
    Rulebook,
    _counts_at_or_below,
    award,
    award_fractions,
    contract_years_for,
    focal_fractions,
    lookup,
    max_winners_for,
    resolve_pre_awards,
    valid_bids,
    volume_share_for,
)

NAN = math.nan
INF = math.inf

# Published rows, vbp_facts §2.2 "Maximum winners vs qualified bidders N" (N = 1..15, >= 16).
BATCH9_ROW = (1, 2, 2, 3, 4, 4, 5, 6, 7, 8, 9, 9, 10, 10, 10, 10)
BATCH10_ROW = (1, 2, 2, 3, 3, 3, 4, 5, 6, 6, 7, 8, 8, 9, 9, 10)
TABLE3 = dict(volume_shares=(0.5, 0.6, 0.7, 0.8), contract_years=(1, 1, 2, 3))

PILOT = Rulebook("pilot", "single_winner", volume_shares=(0.65,), pre_award_max_bidders=2)
EXPANSION = Rulebook("expansion", "multi_winner", max_winners=(1, 2, 3),
                     volume_shares=(0.5, 0.6, 0.7), contract_years=(1, 1, 2))
BATCH9 = Rulebook("batch9", "multi_winner", max_winners=BATCH9_ROW, gate_ratio=1.8,
                  gate_abs_yuan=0.10, safe_harbour_cut=0.5, **TABLE3)
BATCH10 = Rulebook("batch10", "multi_winner", max_winners=BATCH10_ROW, gate_ratio=1.8,
                   gate_abs_yuan=0.10, revival=True, **TABLE3)
BATCH11 = dataclasses.replace(BATCH10, name="batch11", anchor_mean_factor=0.5)
STENT = Rulebook("stent", "stent", max_winners=(10,), gate_ratio=1.8, ceiling_is_cap=False,
                 win_below_ceiling=True, shortlist=10, max_products_per_firm=4)
JOINT = Rulebook("joint", "joint", max_winners=(100,), gate_ratio=1.8,
                 rank_volume=(1.0, 0.9, 0.85, 0.8, 0.75, 0.7),
                 rank_release=(0.0, 0.0, 0.05, 0.1, 0.15, 0.2), remainder_excludes_highest=True)
INSULIN = Rulebook("insulin", "insulin", max_winners=(100,), tier_ratio=1.3, tier_b_cut=0.4,
                   tier_volumes=(1.0, 0.8, 0.55, 0.45))

WIDE = (10,)  # a cap that does not bind, to test the gates alone


def no_revival(rb: Rulebook) -> Rulebook:
    return dataclasses.replace(rb, revival=False)


def winners(a: Award) -> list[int]:
    return np.flatnonzero(a.won).tolist()


# ---------------------------------------------------------------- tables


def test_max_winner_tables_batch9_and_batch10():
    expected9 = {1: 1, 2: 2, 3: 2, 4: 3, 5: 4, 6: 4, 7: 5, 8: 6, 9: 7, 10: 8, 11: 9, 12: 9,
                 13: 10, 14: 10, 15: 10, 16: 10, 17: 10, 18: 10, 19: 10, 20: 10}
    expected10 = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 3, 7: 4, 8: 5, 9: 6, 10: 6, 11: 7, 12: 8,
                  13: 8, 14: 9, 15: 9, 16: 10, 17: 10, 18: 10, 19: 10, 20: 10}
    assert {n: max_winners_for(BATCH9, n) for n in range(1, 21)} == expected9
    assert {n: max_winners_for(BATCH10, n) for n in range(1, 21)} == expected10
    assert max_winners_for(BATCH9, 0) == 0 and max_winners_for(BATCH10, 0) == 0
    # The scenario's shortened row (last entry repeated) gives the same answers.
    short9 = dataclasses.replace(BATCH9, max_winners=BATCH9_ROW[:13])
    assert [max_winners_for(short9, n) for n in range(1, 21)] == list(expected9.values())


def test_table3_volume_shares_and_contract_terms():
    assert [volume_share_for(BATCH9, k) for k in range(0, 8)] == [0, .5, .6, .7, .8, .8, .8, .8]
    assert [contract_years_for(BATCH9, k) for k in range(1, 8)] == [1, 1, 2, 3, 3, 3, 3]


def test_packaged_contract_terms_follow_the_published_rows():
    """vbp_facts Table 1: batch 2 1-2 winners 1 yr, 3: 2, >=4: 3; batch 3 1 winner 1 yr, 2-3: 2,
    >=4: 3; batch 4 "as batch 3"; batches 5 and 7 Table 3 (as batch 2)."""
    from vbp.scenario import load_scenario

    s = load_scenario("national-history")
    terms = {r.id: [contract_years_for(s.rulebook(r.rulebook), k) for k in range(1, 6)]
             for r in s.rounds if r.id in ("batch2", "batch3", "batch4", "batch5", "batch7")}
    assert terms == {"batch2": [1, 1, 2, 3, 3], "batch3": [1, 2, 2, 3, 3], "batch4": [1, 2, 2, 3, 3],
                     "batch5": [1, 1, 2, 3, 3], "batch7": [1, 1, 2, 3, 3]}


def test_lookup_uses_last_entry_and_rejects_zero():
    assert [lookup((5, 6, 7), i) for i in (1, 2, 3, 4, 99)] == [5, 6, 7, 7, 7]
    with pytest.raises(ValueError):
        lookup((5,), 0)


# ---------------------------------------------------------------- validation


def test_rulebook_validation_names_field_and_value():
    with pytest.raises(ValueError) as e:
        Rulebook("batch7", "multi_winner", volume_shares=(0.5, 1.3))
    assert str(e.value) == "rulebook 'batch7': volume_shares must be in [0, 1], got 1.3"
    bad = [dict(kind="lottery"), dict(max_winners=()), dict(max_winners=(0,)),
           dict(max_winners=(True,)), dict(contract_years=(1.5,)), dict(gate_ratio=0.0),
           dict(gate_abs_yuan=-0.1), dict(safe_harbour_cut=1.5), dict(anchor_mean_factor=NAN),
           dict(shortlist=0), dict(pre_award_max_bidders=-1), dict(volume_shares=())]
    for kw in bad:
        with pytest.raises(ValueError, match="rulebook 'x': "):
            Rulebook(**{"name": "x", "kind": "multi_winner", **kw})
    with pytest.raises(ValueError, match="rank_volume"):
        Rulebook("j", "joint")
    with pytest.raises(ValueError, match="tier_volumes"):
        Rulebook("i", "insulin", tier_volumes=(1.0, 0.8, 0.5))
    with pytest.raises(ValueError, match="rank 1"):
        Rulebook("j", "joint", rank_volume=(1.0,), rank_release=(0.1,))


def test_rulebook_from_toml_lists_is_hashable_tuples():
    rb = Rulebook("b", "multi_winner", max_winners=[1, 2], volume_shares=[0.5, 0.6])
    assert rb.max_winners == (1, 2) and isinstance(rb.volume_shares, tuple)
    assert hash(rb) == hash(dataclasses.replace(rb))
    assert set(RULEBOOK_KINDS) == {"single_winner", "multi_winner", "stent", "joint", "insulin"}


def test_award_input_validation():
    with pytest.raises(ValueError, match="ceiling"):
        award(BATCH9, np.array([1.0]), 0.0)
    with pytest.raises(ValueError, match="demand_share"):
        award(JOINT, np.array([1.0, 2.0]), 10.0, demand_share=np.array([0.7, 0.7]))
    with pytest.raises(ValueError, match="reserve"):
        award(BATCH10, np.array([1.0, 2.0]), 10.0)
    with pytest.raises(ValueError, match="firm"):
        award(STENT, np.array([1.0, 2.0]), 10.0, firm=np.array([1]))
    a = award(BATCH9, np.array([1.0, 2.0]), 10.0)
    with pytest.raises(ValueError):
        a.agreed[0] = 1.0


# ---------------------------------------------------------------- drug gates


def test_gate_18x_lowest():
    rb = dataclasses.replace(BATCH9, max_winners=WIDE)
    a = award(rb, np.array([18.01, 10.0, 25.0, 18.0]), 30.0)  # 50% route: <= 15
    assert winners(a) == [1, 3]
    assert a.n_valid == 4 and a.n_winners == 2
    np.testing.assert_allclose(a.agreed, [0, 0.3, 0, 0.3])  # 60% split between 2
    np.testing.assert_array_equal(a.price, [NAN, 10.0, NAN, 18.0])


def test_gate_low_price_exemption_010_yuan():
    rb = Rulebook("x", "multi_winner", max_winners=WIDE, gate_ratio=1.8, gate_abs_yuan=0.10)
    a = award(rb, np.array([0.01, 0.09, 0.10, 0.11, 0.5]), 1.0)
    assert winners(a) == [0, 1, 2]


def test_gate_50_percent_below_ceiling_route():
    rb = dataclasses.replace(BATCH9, max_winners=WIDE)
    a = award(rb, np.array([1.0, 4.9, 5.0, 5.1, 9.0, 10.5]), 10.0)  # 10.5 above ceiling
    assert winners(a) == [0, 1, 2] and a.n_valid == 5


def test_batch10_has_no_50_percent_route():
    bids = np.array([1.0, 4.5, 1.5, 9.0])  # 4.5 = 45% of the ceiling, > 1.8 x lowest
    assert award(BATCH9, bids, 10.0).won[1]
    a10 = award(BATCH10, bids, 10.0, reserve=np.full(4, INF))
    assert winners(a10) == [0, 2]


def test_batch11_anchor_raises_the_gate():
    rb = dataclasses.replace(no_revival(BATCH11), max_winners=WIDE)
    # anchor = max(1, 0.5 * 7.75) = 3.875, gate = 6.975: the 10s still lose
    assert winners(award(rb, np.array([1.0, 10.0, 10.0, 10.0]), 20.0)) == [0]
    # mean 10 -> anchor 5 -> gate 9: 9 wins, 16 and 20 lose; the plain 1.8x gate would stop at 3.6
    bids = np.array([2.0, 6.0, 7.0, 9.0, 16.0, 20.0])
    assert winners(award(rb, bids, 20.0)) == [0, 1, 2, 3]
    assert winners(award(dataclasses.replace(rb, anchor_mean_factor=None), bids, 20.0)) == [0]
    # the anchor never lowers the gate below 1.8 x lowest
    assert winners(award(rb, np.array([2.0, 3.6, 3.7]), 20.0)) == [0, 1]


def test_revival_at_highest_winning_price():
    bids = np.array([1.0, 1.5, 1.8, 3.0, 4.0, 5.0, 6.0, 7.0])  # N = 8: batch-10 cap 5
    reserve = np.array([0.5, 0.5, 0.5, 2.0, 1.7, 1.0, 1.5, 0.1])
    a = award(BATCH10, bids, 10.0, reserve=reserve)
    assert winners(a) == [0, 1, 2, 4, 5]  # 3 declines (reserve 2 > 1.8); 6, 7 find the cap full
    np.testing.assert_array_equal(a.price[a.won], [1.0, 1.5, 1.8, 1.8, 1.8])
    np.testing.assert_allclose(a.agreed[a.won], 0.16)
    assert not award(no_revival(BATCH10), bids, 10.0).won[4]


def test_revival_with_a_single_gate_winner_uses_18x_its_price():
    bids = np.array([1.0, 2.0, 3.0, 4.0])  # N = 4: cap 3; only 1.0 passes 1.8x
    a = award(BATCH10, bids, 10.0, reserve=np.array([0.5, 1.8, 1.0, 5.0]))
    assert winners(a) == [0, 1, 2]
    np.testing.assert_array_equal(a.price[a.won], [1.0, 1.8, 1.8])
    # one firm with two gate winners; 1.8 x 6 = 10.8 is capped at the ceiling 10
    rb = dataclasses.replace(BATCH10, max_winners=WIDE)
    a = award(rb, np.array([5.0, 6.0, 9.5]), 10.0, reserve=np.array([1, 1, 9.9]),
              firm=np.array([7, 7, 8]))
    np.testing.assert_array_equal(a.price, [5.0, 6.0, 10.0])
    # two firms: the revival price is the highest winning price, 6 < reserve 9.9
    a = award(rb, np.array([5.0, 6.0, 9.5]), 10.0, reserve=np.array([1, 1, 9.9]),
              firm=np.array([7, 8, 9]))
    assert winners(a) == [0, 1]


def test_price_ties_rank_lower_index_first():
    rb = Rulebook("one", "multi_winner")  # at most 1 winner, no gates
    assert winners(award(rb, np.array([2.0, 1.0, 1.0]), 10.0)) == [1]
    assert winners(award(PILOT, np.array([3.0, 3.0, 3.0]), 10.0)) == [0]


def test_no_winner_reasons():
    assert award(BATCH9, np.array([NAN, NAN]), 10.0).reason == "no bids"
    assert award(BATCH9, np.array([]), 10.0).reason == "no bids"
    a = award(BATCH9, np.array([11.0, -1.0, 0.0, NAN]), 10.0)
    assert a.reason == "no valid bids" and a.n_valid == 0 and not a.won.any()
    abs_only = Rulebook("x", "multi_winner", gate_abs_yuan=0.1)
    assert award(abs_only, np.array([1.0, 2.0]), 10.0).reason == "no bid passes the gates"
    assert award(BATCH9, np.array([1.0]), 10.0).reason == ""


# ---------------------------------------------------------------- pilot


def test_pilot_single_winner_and_pre_award():
    a = award(PILOT, np.array([3.0, 2.0, 5.0]), 10.0)
    assert winners(a) == [1] and a.agreed[1] == 0.65 and a.agreed.sum() == 0.65
    assert not a.pre_award
    assert award(PILOT, np.array([3.0, 2.0]), 10.0).pre_award
    one = award(PILOT, np.array([NAN, 4.0, 50.0]), 10.0)  # 50 is above the ceiling
    assert one.n_valid == 1 and winners(one) == [1] and one.pre_award


def test_resolve_pre_awards():
    cuts = np.array([0.9, 0.2, 0.5, 0.7])
    accept = np.array([0.95, 0.6, 0.5, 0.1])
    # outright: the two largest cuts (0, 3); 1 accepts the reference 0.55; 2 cannot
    np.testing.assert_array_equal(resolve_pre_awards(cuts, 0.55, 2, accept), [1, 1, 0, 1])
    np.testing.assert_array_equal(resolve_pre_awards(cuts, 0.99, 0, accept), [0, 0, 0, 0])
    np.testing.assert_array_equal(resolve_pre_awards(cuts, 0.99, 7, accept), [1, 1, 1, 1])
    # a bid cut that already reaches the reference needs no concession; ties to lower index
    np.testing.assert_array_equal(
        resolve_pre_awards(np.array([0.6, 0.6, 0.6]), 0.6, 1, np.zeros(3)), [1, 1, 1])
    np.testing.assert_array_equal(
        resolve_pre_awards(np.array([0.3, 0.3]), 0.6, 1, np.zeros(2)), [1, 0])
    with pytest.raises(ValueError):
        resolve_pre_awards(cuts, 0.5, -1, accept)


# ---------------------------------------------------------------- devices


def test_stent_top10_with_firm_cap_and_2850_threshold():
    # firm 0 has the six cheapest products: only four enter the shortlist
    prices = [500, 510, 520, 530, 540, 550, 600, 700, 1000, 2000, 2849, 2850, 2900, 3000]
    firms = [0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    perm = np.random.default_rng(3).permutation(len(prices))  # input order is arbitrary
    bids, firm = np.array(prices, float)[perm], np.array(firms)[perm]
    share = np.arange(1, 15, dtype=float)[perm] / 105.0
    a = award(STENT, bids, 2850.0, firm=firm, demand_share=share)
    won_prices = sorted(bids[a.won].tolist())
    # shortlist: 500-530, 600, 700, 1000, 2000, 2849, 2850; 2850 is neither <= 900 nor < 2,850
    assert won_prices == [500, 510, 520, 530, 600, 700, 1000, 2000, 2849]
    assert a.n_valid == 14  # above the ceiling is still valid for stents
    assert a.agreed.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(a.agreed[a.won], share[a.won] / share[a.won].sum())
    # without the firm cap, firm 0's 540 and 550 take shortlist places
    free = award(dataclasses.replace(STENT, max_products_per_firm=None), bids, 2850.0, firm=firm)
    assert sorted(bids[free.won].tolist()) == [500, 510, 520, 530, 540, 550, 600, 700, 1000, 2000]
    renewal = dataclasses.replace(STENT, gate_ratio=None)
    assert award(renewal, np.array([2850.0, 3000.0]), 2850.0).reason == "no bid passes the gates"


def test_joint_rank_volume_table_and_remainder_pool():
    # 7 winners (<= 180), one loser; equal demand shares s = 1/8
    bids = np.array([100, 120, 130, 140, 150, 160, 170, 400], float)
    a = award(JOINT, bids, 1000.0)
    s = 1 / 8
    base = s * np.array([1.0, 0.9, 0.85, 0.8, 0.75, 0.7, 0.7])
    pool = s + s * (0.05 + 0.10 + 0.15 + 0.20 + 0.20)  # loser + released
    expected = np.append(base, 0.0)
    expected[:6] += pool / 6  # the highest-priced winner takes no remainder
    np.testing.assert_allclose(a.agreed, expected)
    assert a.agreed.sum() == pytest.approx(0.925)


def test_joint_remainder_split_by_demand_share():
    bids, share = np.array([100.0, 150.0, 200.0]), np.array([0.5, 0.3, 0.2])
    a = award(JOINT, bids, 1000.0, demand_share=share)  # 200 > 1.8 x 100 loses
    np.testing.assert_allclose(a.agreed, [0.5 + 0.2, 0.27, 0.0])
    b = award(dataclasses.replace(JOINT, remainder_excludes_highest=False), bids, 1000.0,
              demand_share=share)
    np.testing.assert_allclose(b.agreed, [0.5 + 0.125, 0.27 + 0.075, 0.0])
    alone = award(JOINT, np.array([100.0, 200.0, 300.0]), 1000.0,
                  demand_share=np.array([0.2, 0.3, 0.5]))
    np.testing.assert_allclose(alone.agreed, [1.0, 0.0, 0.0])


def test_insulin_tiers():
    # ceiling 100: A1 = lowest, A <= 1.3 x 20 = 26, B <= 60, C above; 101 is invalid
    bids = np.array([60.1, 20.0, 26.0, 26.1, 60.0, 100.0, 101.0])
    a = award(INSULIN, bids, 100.0)
    np.testing.assert_allclose(a.agreed * 7, [0.45, 1.0, 0.8, 0.55, 0.55, 0.45, 0.0])
    assert a.n_winners == 6 and not a.won[6]
    capped = award(dataclasses.replace(INSULIN, max_winners=(2,)), bids, 100.0)
    assert winners(capped) == [1, 2]


def test_insulin_unassigned_demand_goes_to_tier_a():
    # equal shares 1/7: tiers give A1 1.0, A 0.8, B 0.55 + 0.55, C 0.45 + 0.45, invalid 0 -> 3.8/7
    # assigned; the remaining 3.2/7 goes to A1 and A (equal shares) -> +1.6/7 each
    pooled = dataclasses.replace(INSULIN, tier_pool_to_a=True)
    bids = np.array([60.1, 20.0, 26.0, 26.1, 60.0, 100.0, 101.0])
    a = award(pooled, bids, 100.0)
    np.testing.assert_allclose(a.agreed * 7, [0.45, 2.6, 2.4, 0.55, 0.55, 0.45, 0.0])
    assert a.agreed.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- properties

price = st.one_of(st.just(NAN), st.floats(0.0, 15.0).map(lambda x: round(x, 1)),
                  st.sampled_from([0.1, 1.0, 1.8, 3.6, 5.0, 10.0]),  # gate and ceiling edges
                  st.floats(0.01, 0.3), st.floats(-1.0, 15.0))
bid_vectors = st.lists(price, min_size=0, max_size=14).map(lambda v: np.array(v, float))
MULTI = [EXPANSION, BATCH9, no_revival(BATCH10), no_revival(BATCH11),
         dataclasses.replace(BATCH9, safe_harbour_cut=None, gate_abs_yuan=None)]
ALL = [PILOT, dataclasses.replace(PILOT, max_winners=(3,)), *MULTI, STENT,
       dataclasses.replace(STENT, gate_ratio=None),
       dataclasses.replace(STENT, shortlist=3, max_products_per_firm=None, max_winners=(100,)),
       JOINT, dataclasses.replace(JOINT, gate_ratio=None, remainder_excludes_highest=False),
       dataclasses.replace(JOINT, max_winners=(2,)), INSULIN,
       dataclasses.replace(INSULIN, tier_pool_to_a=True)]
CEILING = 10.0
FAST = settings(max_examples=150, deadline=None)


def shares(n: int, seed: int) -> np.ndarray:
    w = np.random.default_rng(seed).dirichlet(np.ones(n + 1))  # leaves some demand unreported
    return w[:n]


def gate_limit(rb: Rulebook, valid_prices: np.ndarray) -> float:
    limits = []
    if rb.gate_ratio is not None:
        anchor = valid_prices.min()
        if rb.anchor_mean_factor is not None:
            anchor = max(anchor, rb.anchor_mean_factor * valid_prices.mean())
        limits.append(rb.gate_ratio * anchor)
    if rb.gate_abs_yuan is not None:
        limits.append(rb.gate_abs_yuan)
    if rb.safe_harbour_cut is not None:
        limits.append((1 - rb.safe_harbour_cut) * CEILING)
    return max(limits) if limits else INF


@FAST
@given(bids=bid_vectors, i=st.sampled_from(range(len(ALL))), seed=st.integers(0, 99))
def test_award_invariants_every_kind(bids, i, seed):
    rb = ALL[i]
    a = award(rb, bids, CEILING, demand_share=shares(bids.size, seed))
    valid = valid_bids(rb, bids, CEILING)
    assert a.n_valid == valid.sum() and a.n_winners == a.won.sum()
    assert a.n_winners <= max_winners_for(rb, a.n_valid)
    assert not (a.won & ~valid).any()
    assert np.all((a.agreed >= 0) & (a.agreed <= 1)) and a.agreed.sum() <= 1 + 1e-12
    assert not a.agreed[~a.won].any()
    np.testing.assert_array_equal(np.isnan(a.price), ~a.won)
    np.testing.assert_array_equal(a.price[a.won], bids[a.won])
    assert (a.reason == "") == (a.n_winners > 0)


@FAST
@given(bids=bid_vectors, i=st.sampled_from(range(len(MULTI))))
def test_multi_winner_winners_are_the_cheapest_eligible(bids, i):
    rb = MULTI[i]
    a = award(rb, bids, CEILING)
    valid = valid_bids(rb, bids, CEILING)
    if not valid.any():
        return
    limit = gate_limit(rb, bids[valid])
    eligible = [j for j in np.argsort(np.where(valid, bids, INF), kind="stable")
                if valid[j] and bids[j] <= limit]
    cap = max_winners_for(rb, int(valid.sum()))
    assert winners(a) == sorted(eligible[:cap])
    assert all(bids[j] <= limit for j in winners(a))
    if a.n_winners:
        assert a.agreed[a.won] == pytest.approx(volume_share_for(rb, a.n_winners) / a.n_winners)


@FAST
@given(bids=bid_vectors, i=st.sampled_from(range(len(MULTI))), f=st.floats(0.05, 1.0))
def test_lowering_a_winning_bid_keeps_it_winning(bids, i, f):
    rb = MULTI[i]
    if rb.anchor_mean_factor is not None:
        return
    a = award(rb, bids, CEILING)
    for j in winners(a):
        lower = bids.copy()
        lower[j] *= f
        if lower[j] <= 0:  # a denormal bid scaled down underflows to 0, which is not a bid
            continue
        assert award(rb, lower, CEILING).won[j]


@FAST
@given(bids=bid_vectors, reserve=st.lists(st.floats(0.0, 12.0), min_size=14, max_size=14),
       anchor=st.booleans())
def test_revival_invariants(bids, reserve, anchor):
    rb = BATCH11 if anchor else BATCH10
    r = np.array(reserve[: bids.size])
    a = award(rb, bids, CEILING, reserve=r)
    base = award(no_revival(rb), bids, CEILING)
    assert a.n_winners <= max_winners_for(rb, a.n_valid)
    assert not (base.won & ~a.won).any()  # revival only adds winners
    revived = a.won & ~base.won
    if revived.any():
        p = a.price[revived]
        assert np.all(p == p[0]) and np.all(r[revived] <= p[0]) and p[0] <= CEILING
        assert p[0] >= np.nanmax(base.price)
    k = max(a.n_winners, 1)
    np.testing.assert_allclose(a.agreed[a.won], volume_share_for(rb, a.n_winners) / k)


@settings(max_examples=120, deadline=None)
@given(rows=st.lists(st.lists(price, min_size=6, max_size=6), min_size=1, max_size=6),
       i=st.sampled_from(range(len(ALL) + 2)), seed=st.integers(0, 99),
       equal=st.booleans())
def test_award_fractions_matches_award_row_by_row(rows, i, seed, equal):
    rb = (ALL + [BATCH10, BATCH11])[i]  # revival rulebooks: nobody accepts a revival price
    bids = np.array(rows, float)
    share = None if equal else shares(bids.shape[1], seed)
    got = award_fractions(rb, bids, CEILING, share)
    reserve = np.full(bids.shape[1], INF)
    expected = np.array([award(rb, row, CEILING, reserve=reserve, demand_share=share).agreed
                         for row in bids])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


# every kind, and each gate, tier and pool switched on and off
FOCAL = ALL + [BATCH10, BATCH11,
               dataclasses.replace(STENT, win_below_ceiling=False),
               dataclasses.replace(STENT, gate_ratio=None, win_below_ceiling=False, shortlist=None),
               dataclasses.replace(INSULIN, tier_ratio=None, tier_pool_to_a=True),
               dataclasses.replace(INSULIN, tier_b_cut=None, tier_pool_to_a=True),
               dataclasses.replace(INSULIN, tier_ratio=0.9, max_winners=(1, 2, 3))]


@settings(max_examples=400, deadline=None)
@given(nodes=st.lists(price, min_size=1, max_size=8),
       rivals=st.lists(st.lists(price, min_size=0, max_size=19), min_size=1, max_size=5),
       i=st.sampled_from(range(len(FOCAL))), cap=st.booleans())
def test_focal_fractions_equal_award_fractions_bit_for_bit(nodes, rivals, i, cap):
    """The solver's fast path: a focal bid (first in its row, so it wins ties) against rival
    profiles gets exactly what award_fractions gives column 0 of the stacked rows. Exact
    equality, since cached bid functions do not record which path solved them."""
    rb = dataclasses.replace(FOCAL[i], ceiling_is_cap=cap)
    k = min(len(r) for r in rivals)
    x, r = np.array(nodes, float), np.array([row[:k] for row in rivals], float)
    rows = np.empty((x.size * r.shape[0], k + 1))
    rows[:, 0], rows[:, 1:] = np.repeat(x, r.shape[0]), np.tile(r, (x.size, 1))
    expected = award_fractions(rb, rows, CEILING)[:, 0].reshape(x.size, r.shape[0])
    got = focal_fractions(rb, x, r, CEILING)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("rb", FOCAL, ids=lambda rb: rb.name)
def test_focal_fractions_large_sample_with_ties(rb):
    rng = np.random.default_rng(12)
    rivals = np.round(rng.uniform(0.0, 12.0, (512, 59)), 1)  # 60 bidders: ties, invalid bids
    rivals[rng.random(rivals.shape) < 0.1] = NAN
    nodes = np.concatenate([np.round(rng.uniform(0.0, 12.0, 40), 1), [0.1, 1.8, 5.0, 10.0, NAN]])
    rows = np.empty((nodes.size * 512, 60))
    rows[:, 0], rows[:, 1:] = np.repeat(nodes, 512), np.tile(rivals, (nodes.size, 1))
    expected = award_fractions(rb, rows, CEILING)[:, 0].reshape(nodes.size, 512)
    assert np.array_equal(focal_fractions(rb, nodes, rivals, CEILING), expected)
    assert expected.any()  # the sample is not all losers


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.lists(price, min_size=0, max_size=12), min_size=1, max_size=6),
       t=st.lists(st.one_of(price, st.just(INF), st.just(-INF)), min_size=1, max_size=9),
       strict=st.booleans())
def test_counts_at_or_below_equal_broadcast_comparison(values, t, strict):
    """The solver's counting shortcut counts what comparing every value with every threshold
    counts: valid values only, nan thresholds none, ties by `strict`."""
    k = min(len(v) for v in values)
    v = np.array([row[:k] for row in values], float).reshape(len(values), k)
    valid = np.isfinite(v) & (v > 0) & (v <= 10.0)  # as valid_bids under a capped ceiling
    th = np.array(t, float)
    op = np.less if strict else np.less_equal
    with np.errstate(invalid="ignore"):
        expected = (valid[None] & op(v[None], th[:, None, None])).sum(axis=2)
    assert np.array_equal(_counts_at_or_below(v, valid, th, strict), expected)


@pytest.mark.parametrize("rb, nodes, rivals", [
    (dataclasses.replace(STENT, gate_ratio=2.0), [5.0], [[10.0, 7.0]]),  # gate == ceiling: a rival at it passes
    (STENT, [1.0], [[10.0]]),  # a rival at the ceiling is not below it
    (dataclasses.replace(STENT, gate_ratio=2.0, ceiling_is_cap=False), [5.0], [[10.0, 12.0]]),
    (dataclasses.replace(STENT, ceiling_is_cap=False), [1.0], [[10.0, 11.0]]),
])
def test_focal_fractions_at_the_stent_gate_and_ceiling_boundaries(rb, nodes, rivals):
    """Bids exactly at the ratio gate or the ceiling, where `<=` and `<` part ways."""
    x, r = np.array(nodes, float), np.array(rivals, float)
    rows = np.hstack([np.repeat(x, len(r))[:, None], np.tile(r, (len(x), 1))])
    expected = award_fractions(rb, rows, CEILING)[:, 0].reshape(len(x), len(r))
    assert np.array_equal(focal_fractions(rb, x, r, CEILING), expected)


def test_focal_fractions_refuses_bad_shapes():
    with pytest.raises(ValueError, match="nodes must be 1-D"):
        focal_fractions(BATCH9, np.ones((2, 2)), np.ones((2, 3)), CEILING)
    with pytest.raises(ValueError, match="ceiling must be"):
        focal_fractions(BATCH9, np.ones(2), np.ones((2, 3)), 0.0)


def test_award_fractions_known_answers():
    stent = dataclasses.replace(STENT, max_products_per_firm=None)
    bids = np.array([[500, 2850, 2849, 901, 3000], [2850, 2900, NAN, 3000, 2850]], float)
    np.testing.assert_allclose(award_fractions(stent, bids, 2850.0),
                               [[1 / 3, 0, 1 / 3, 1 / 3, 0], [0.25, 0.25, 0, 0.25, 0.25]])
    joint = award_fractions(JOINT, np.array([[100.0, 150.0, 200.0], [150.0, 100.0, 170.0]]),
                            1000.0, np.array([0.5, 0.3, 0.2]))
    # row 2: ranks 2, 1, 3; rank 3 releases 5% of 0.2, shared by ranks 1-2 as 0.3 : 0.5
    np.testing.assert_allclose(joint, [[0.7, 0.27, 0.0], [0.45625, 0.30375, 0.17]])
    insulin = award_fractions(INSULIN, np.array([[60.1, 20.0, 26.0, 26.1, 60.0, 100.0, 101.0]]),
                              100.0)
    np.testing.assert_allclose(insulin * 7, [[0.45, 1.0, 0.8, 0.55, 0.55, 0.45, 0.0]])
    drugs = award_fractions(BATCH9, np.array([[1.0, 4.9, 5.0, 5.1], [2.0, 1.0, 1.0, NAN]]), 10.0)
    # row 2: N = 3, cap 2; the tie at 1.0 is inside the cap, 2.0 loses
    np.testing.assert_allclose(drugs, [[0.7 / 3] * 3 + [0], [0, 0.3, 0.3, 0]])


@pytest.mark.parametrize("rb", ALL, ids=lambda rb: rb.name)
def test_award_fractions_large_sample_with_ties(rb):
    rng = np.random.default_rng(11)
    bids = np.round(rng.uniform(0.0, 14.0, (512, 40)), 1)  # many ties and invalid bids
    bids[rng.random(bids.shape) < 0.1] = NAN
    share = shares(40, 5)
    got = award_fractions(rb, bids, CEILING, share)
    assert got.shape == (512, 40)
    for s in range(0, 512, 37):
        np.testing.assert_allclose(got[s], award(rb, bids[s], CEILING, demand_share=share).agreed,
                                   rtol=1e-12, atol=1e-15)
