"""Market dynamics: supply months, exit and entry, re-tenders, adaptive bidders, planner backup,
dynamics metrics and the `vbp designs` command.

Model-level tests run small scenarios written to a temporary folder (a few pilot, expansion and
batch-2 molecules with cost-plus bidding) so that each replication takes a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import simpy
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from vbp import wdp
from vbp.cli import cli
from vbp.designs import DESIGN_METRICS, DESIGNS
from vbp.dynamics import hhi, loser_profit, stays, supply_month
from vbp.experiment import run
from vbp.market import entrants
from vbp.metrics import dynamics_metrics, renewal_prices
from vbp.model import AwardedUnit, ContractBook, Simulation, run_replication
from vbp.process import procurement_office
from vbp.records import to_frames
from vbp.rules import Award
from vbp.scenario import load_scenario

SEED = 3

# three drug rounds cut down to a few molecules each; no dynamics section: everything off
SMALL = """
name = "small-dynamics"
end = "2022-12-31"
rounds = [
  { from = "pilot", molecules = 8, bidding_products = 11 },
  { from = "expansion", molecules = 6, bidding_firms = 16, market_value_bn = 5.0 },
  { from = "batch2", molecules = 6, bidding_firms = 20, market_value_bn = 6.0 },
]
[agents]
strategy = "cost_plus"
markup = 0.5
"""

# batch 2 alone, for planner mode (the pilot's single winners need full capacity)
BATCH2 = """
name = "batch2-planner"
end = "2021-12-31"
rounds = [{ from = "batch2", molecules = 8, bidding_firms = 30, market_value_bn = 6.0 }]
[agents]
strategy = "cost_plus"
markup = 0.5
"""

# batch-2 molecules and the stent round, run long enough for the stent contract to be re-tendered
STENTS = """
name = "stent-renewal"
end = "2023-12-31"
rounds = [
  { from = "batch2", molecules = 4, bidding_firms = 14, market_value_bn = 4.2 },
  { from = "stents" },
]
[agents]
strategy = "cost_plus"
markup = 0.5
"""

RETENDER = ["market.renewal=retender"]
SUPPLY = ["dynamics.supply=true"]
KEY = ["rep", "round", "unit"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scenarios")
    out = {}
    for name, text in (("small", SMALL), ("batch2", BATCH2), ("stents", STENTS)):
        out[name] = folder / f"{name}.toml"
        out[name].write_text(text)
    return out


def frames_of(path: Path, overrides=(), reps=(0,), seed: int = SEED) -> dict[str, pd.DataFrame]:
    scenario = load_scenario(path, list(overrides))
    return to_frames([run_replication(scenario, seed, rep) for rep in reps])


def with_previous(tenders: pd.DataFrame) -> pd.DataFrame:
    """Re-tender rows beside the row of the tender they replace (columns suffixed _prev)."""
    t = tenders.sort_values([*KEY, "tender"]).reset_index(drop=True)
    prev = t.groupby(KEY).shift(1).add_suffix("_prev")
    both = pd.concat([t, prev], axis=1)
    return both[both["tender"] > 0]


# ---------------------------------------------------------------------------------------------
# supply_month


def month(unit_of, volume, capacity, down, n_units=None, draws=None, *, fail_prob=0.0, lag_share=0.0,
          capacity_binds=True):
    """One month with explicit draws: (uniforms, lengths); default: nobody's uniform is below 1."""
    n = len(volume)
    uniform, length = (np.full(n, 0.999), np.ones(n, dtype=int)) if draws is None else draws
    n_units = int(np.max(unit_of)) + 1 if n_units is None else n_units
    return supply_month(np.asarray(unit_of), np.asarray(volume, float), np.asarray(capacity, float),
                        np.asarray(down), n_units, np.asarray(uniform, float), np.asarray(length),
                        fail_prob=fail_prob, lag_share=lag_share, capacity_binds=capacity_binds)


def test_backup_takes_a_failed_winners_volume_up_to_its_spare_capacity():
    # winner 0 is down; winner 1 delivers its own 10 and has 14 - 10 = 4 to spare for winner 0's 10
    sm = month([0, 0], [10, 10], [30, 14], [2, 0])
    np.testing.assert_allclose(sm.own, [0, 10])
    np.testing.assert_allclose(sm.backup, [0, 4])
    np.testing.assert_allclose(sm.shortage, [6])
    np.testing.assert_allclose(sm.need, [20])
    np.testing.assert_array_equal(sm.down, [1, 0])
    assert sm.new_failures == 0


def test_without_binding_capacity_the_backup_takes_everything():
    sm = month([0, 0], [10, 10], [30, 14], [2, 0], capacity_binds=False)
    np.testing.assert_allclose(sm.backup, [0, 10])
    np.testing.assert_allclose(sm.shortage, [0])
    # an up winner delivers above its capacity too
    sm = month([0], [50], [10], [0], capacity_binds=False)
    np.testing.assert_allclose(sm.own, [50])
    np.testing.assert_allclose(sm.shortage, [0])


def test_volume_above_capacity_goes_to_the_other_winners():
    sm = month([0, 0], [20, 5], [12, 30], [0, 0])
    np.testing.assert_allclose(sm.own, [12, 5])
    np.testing.assert_allclose(sm.backup, [0, 8])
    np.testing.assert_allclose(sm.shortage, [0])


def test_a_new_failure_leaves_the_lag_share_short():
    # winner 0 fails this month (draw 0.0 < 0.5) for 3 months; winner 1 stays up (0.9 >= 0.5)
    sm = month([0, 0], [10, 10], [30, 30], [0, 0], draws=([0.0, 0.9], [3, 3]), fail_prob=0.5, lag_share=0.5)
    np.testing.assert_allclose(sm.own, [0, 10])
    np.testing.assert_allclose(sm.backup, [0, 5])  # half the month passes before the backup steps in
    np.testing.assert_allclose(sm.shortage, [5])
    np.testing.assert_array_equal(sm.down, [2, 0])
    assert sm.new_failures == 1
    # a failure that started earlier is not lagged: the backup takes all it can
    sm = month([0, 0], [10, 10], [30, 30], [2, 0], draws=([0.9, 0.9], [1, 1]), fail_prob=0.5, lag_share=0.5)
    np.testing.assert_allclose(sm.backup, [0, 10])
    np.testing.assert_allclose(sm.shortage, [0])


def test_a_single_winner_that_fails_is_short_by_its_whole_volume():
    sm = month([0, 1, 1], [7, 3, 4], [100, 100, 100], [0, 0, 0], fail_prob=1.0)
    np.testing.assert_allclose(sm.own, [0, 0, 0])
    np.testing.assert_allclose(sm.backup, [0, 0, 0])
    np.testing.assert_allclose(sm.shortage, [7, 7])
    np.testing.assert_allclose(sm.need, [7, 7])
    assert sm.new_failures == 3
    assert (sm.down >= 0).all()
    # a winner of another unit never backs up this one
    sm = month([0, 1], [7, 3], [100, 100], [1, 0])
    np.testing.assert_allclose(sm.shortage, [7, 0])
    np.testing.assert_allclose(sm.backup, [0, 0])


def test_down_counts_down_and_a_failure_lasts_its_drawn_length():
    sm = month([0, 0, 0], [1, 1, 1], [9, 9, 9], [3, 1, 0])
    np.testing.assert_array_equal(sm.down, [2, 0, 0])
    np.testing.assert_allclose(sm.own, [0, 0, 1])
    # a failure of 2 months: down this month and the next, supplying again in the third
    sm = month([0], [4], [9], [0], draws=([0.0], [2]), fail_prob=0.5)
    states = [sm.own[0]]
    for _ in range(2):
        sm = month([0], [4], [9], sm.down, draws=([0.9], [5]), fail_prob=0.5)
        states.append(sm.own[0])
    assert states == [0.0, 0.0, 4.0]
    # a winner already down cannot start a second failure
    sm = month([0], [4], [9], [2], fail_prob=1.0)
    assert sm.new_failures == 0 and sm.down[0] == 1


@st.composite
def supply_instances(draw):
    n = draw(st.integers(1, 6))
    n_units = draw(st.integers(1, 3))
    unit_of = np.array(draw(st.lists(st.integers(0, n_units - 1), min_size=n, max_size=n)))
    vols = st.floats(0, 1e6, allow_nan=False)
    volume = np.array(draw(st.lists(vols, min_size=n, max_size=n)))
    capacity = np.array(draw(st.lists(st.floats(1e-3, 2e6), min_size=n, max_size=n)))
    down = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    return unit_of, volume, capacity, down, n_units, dict(
        fail_prob=draw(st.floats(0, 1)), lag_share=draw(st.floats(0, 1)),
        capacity_binds=draw(st.booleans())), draw(st.integers(0, 2**32 - 1))


@settings(max_examples=80, deadline=None)
@given(supply_instances())
def test_supply_conserves_volume(inst):
    unit_of, volume, capacity, down, n_units, kw, seed = inst
    rng = np.random.default_rng(seed)
    sm = supply_month(unit_of, volume, capacity, down, n_units, rng.random(len(volume)),
                      rng.geometric(0.5, size=len(volume)), **kw)
    due = np.bincount(unit_of, weights=volume, minlength=n_units)
    delivered = np.bincount(unit_of, weights=sm.own + sm.backup, minlength=n_units)
    tol = 1e-9 * max(1.0, volume.sum())
    np.testing.assert_allclose(sm.need, due, atol=tol)
    np.testing.assert_allclose(delivered + sm.shortage, due, atol=tol)
    assert (sm.own >= 0).all() and (sm.backup >= -tol).all() and (sm.shortage >= -tol).all()
    assert (sm.own <= volume + tol).all()
    if kw["capacity_binds"]:
        assert (sm.own + sm.backup <= capacity * (1 + 1e-9) + tol).all()
    was_up = down == 0
    assert sm.new_failures <= was_up.sum()
    # winners down at the start deliver nothing; the countdown never goes below zero
    assert (sm.own[~was_up] == 0).all() and (sm.backup[~was_up] == 0).all()
    assert (sm.down >= 0).all()
    np.testing.assert_array_equal(sm.down[~was_up], down[~was_up] - 1)


# ---------------------------------------------------------------------------------------------
# stays, loser_profit, hhi


def test_stays_compares_profit_with_the_outside_option():
    np.testing.assert_array_equal(stays(np.array([5.0, 10.0, 15.0]), 100.0, 0.1), [False, True, True])
    # no outside option: nobody leaves, even at a loss
    np.testing.assert_array_equal(stays(np.array([-5.0, 0.0]), 100.0, 0.0), [True, True])


def test_loser_profit_known_answer():
    # price = min(own reference, 1.5 x 4) = [6, 6, 4]; margin x 0.3 x 1000 / 2 losers
    got = loser_profit(np.array([2.0, 5.0, 1.0, 7.0]), np.array([10.0, 10.0, 4.0, 10.0]), 4.0, 1000.0, 2,
                       0.3, 1.5)
    np.testing.assert_allclose(got, [600.0, 150.0, 450.0, 0.0])
    np.testing.assert_array_equal(loser_profit(np.array([1.0, 2.0]), np.array([5.0, 5.0]), 4.0, 10.0, 0,
                                               0.3, 1.5), [0.0, 0.0])


def test_hhi_known_answers():
    for k in (1, 2, 3, 7):
        assert hhi(np.full(k, 2.5)) == pytest.approx(1.0 / k)
    assert hhi(np.array([3.0, 1.0])) == pytest.approx(0.625)
    assert np.isnan(hhi(np.zeros(2)))
    assert np.isnan(hhi(np.zeros(0)))


def test_entrants_are_new_to_the_market(files):
    scenario = load_scenario(files["small"])
    sim = Simulation(scenario, SEED, 0)
    rnd = scenario.round("batch2")
    u = max(sim.open_round(rnd), key=lambda x: x.n)
    new = entrants(u, 5, sim.pool, scenario.agents, "drug", np.random.default_rng(1))
    assert new.n == 5
    assert not set(new.firm.tolist()) & set(u.firm.tolist())
    assert len(set(new.firm.tolist())) == 5
    np.testing.assert_array_equal(new.ref_price, np.full(5, u.norm_price))
    np.testing.assert_array_equal(new.reserve, new.cost)
    assert not new.originator.any() and (new.cost > 0).all()
    # never more entrants than firms outside the market
    everyone = entrants(u, 10_000, sim.pool, scenario.agents, "drug", np.random.default_rng(1))
    assert everyone.n == scenario.agents.firm_pool - len(set(u.firm.tolist()))


# ---------------------------------------------------------------------------------------------
# the contract book


def _awarded(k: int, n: int, won) -> AwardedUnit:
    from vbp.market import Unit

    won = np.asarray(won, bool)
    unit = Unit(round_id="r", index=k, label=f"r/m{k}", norm_price=1.0, ref_price=np.ones(n), demand=100.0,
                ceiling=1.0, firm=np.arange(n) + 10 * k, originator=np.zeros(n, bool), cost=np.full(n, 0.1),
                reserve=np.full(n, 0.1), capacity=np.full(n, 240.0), demand_share=None,
                province_idx=np.arange(1), province_demand=np.array([100.0]))
    agreed = np.where(won, 50.0, 0.0)
    award = Award(won=won, price=np.where(won, 0.5, np.nan), agreed=agreed / 100.0, n_valid=n,
                  n_winners=int(won.sum()))
    return AwardedUnit(unit, award, agreed, True, "awarded", 1, np.full(n, 0.5))


def test_a_retender_keeps_the_other_units_failures():
    def draw(k, term):  # supply on: the book keeps each winner's failure state
        return np.ones((12, 3)), np.ones((12, 3), dtype=int)

    book = ContractBook([_awarded(0, 3, [1, 1, 0]), _awarded(1, 2, [1, 1])], np.array([12, 24]),
                        np.ones(2, bool), np.zeros(2, int), 1.0 / 12, draw)
    unit, bidder, volume, _, _, capacity = book.lines()
    np.testing.assert_array_equal(unit, [0, 0, 1, 1])
    np.testing.assert_array_equal(bidder, [0, 1, 0, 1])
    np.testing.assert_allclose(volume, 50.0 / 12)
    np.testing.assert_allclose(capacity, 20.0)
    book.down = np.array([3, 1, 2, 0])
    book.replace(0, _awarded(0, 3, [0, 1, 1]), 48)
    unit, bidder = book.lines()[:2]
    np.testing.assert_array_equal(unit, [0, 0, 1, 1])
    np.testing.assert_array_equal(bidder, [1, 2, 0, 1])
    np.testing.assert_array_equal(book.down, [0, 0, 2, 0])  # the new award starts supplying
    assert book.end_month[0] == 48 and book.tender.tolist() == [1, 0]
    book.stop(0)
    np.testing.assert_array_equal(book.lines()[0], [1, 1])
    np.testing.assert_array_equal(book.down, [2, 0])
    assert book.expiring(24).tolist() == [1] and book.expiring(48).tolist() == []


# ---------------------------------------------------------------------------------------------
# the model: dynamics off, re-tenders, exit and entry


def test_dynamics_off_leaves_deliveries_and_tenders_as_before(files):
    f = frames_of(files["small"], reps=(0, 1))
    d, t, u = f["deliveries"], f["tenders"], f["units"]
    assert len(d) > 0
    for col in ("backup_units", "shortage_units", "shortage_days", "failures"):
        assert (d[col] == 0).all(), col
    assert (t["tender"] == 0).all()
    assert len(t) == len(u)
    both = u.merge(t, on=KEY, suffixes=("", "_t"), validate="one_to_one")
    assert (both["n_winners"] == both["n_winners_t"]).all()
    assert (both["procured"] == both["procured_t"]).all()
    assert (both["n_bidders"] == both["n_bidders_t"]).all()
    assert (both["exits"] == 0).all() and (both["entrants"] == 0).all()
    assert both.loc[both["procured"], "price_ratio"].between(0, 1).all()
    assert both.loc[~both["procured"], "price_ratio"].isna().all()
    assert "retender" not in set(f["events"]["kind"])


def test_retender_without_exit_or_entry_keeps_the_bidders(files):
    f = frames_of(files["small"], [*RETENDER, "dynamics.outside_option=0", "dynamics.entry_rate=0"], reps=(0, 1))
    t = f["tenders"]
    later = with_previous(t)
    assert len(later) >= 5
    assert (later["exits"] == 0).all() and (later["entrants"] == 0).all()
    assert (later["n_bidders"] == later["n_bidders_prev"]).all()
    assert later["procured_prev"].all()  # only units under contract are re-tendered
    assert (later["contract_years"] == 3).all()
    assert "retender" in set(f["events"]["kind"])


def test_a_huge_outside_option_drives_every_loser_out(files):
    f = frames_of(files["small"], [*RETENDER, "dynamics.outside_option=10", "dynamics.entry_rate=0"], reps=(0, 1))
    later = with_previous(f["tenders"])
    assert len(later) >= 5
    assert later["exits"].sum() > 0
    assert (later["entrants"] == 0).all()
    assert (later["n_bidders"] <= later["n_winners_prev"]).all()
    assert (later["exits"] == later["n_bidders_prev"] - later["n_bidders"]).all()
    losers = later["n_bidders_prev"] - later["n_winners_prev"]
    assert (later["exits"] >= losers).all()


def test_entry_adds_new_firms_at_retender(files):
    f = frames_of(files["small"], [*RETENDER, "dynamics.entry_rate=5"], reps=(0, 1))
    later = with_previous(f["tenders"])
    assert later["entrants"].sum() > 0
    # bidders at a re-tender: the earlier bidders that stayed, plus the entrants
    assert (later["n_bidders"] == later["n_bidders_prev"] - later["exits"] + later["entrants"]).all()


def test_retender_bidders_are_survivors_and_newcomers(files):
    scenario = load_scenario(files["small"], [*RETENDER, "dynamics.entry_rate=5", "dynamics.outside_option=0.1"])
    sim = Simulation(scenario, SEED, 0)
    rnd = scenario.round("batch2")
    awarded = sim.award_round(rnd, sim.open_round(rnd))
    seen = 0
    for tender, prev in enumerate((a for a in awarded if a.procured), start=1):
        new = sim.retender(rnd, prev, tender, sim.day(rnd.bid_date) + 400.0)
        row = sim.record.tenders[-1]
        k, n = row.entrants, new.unit.n
        assert row.tender == tender and row.n_bidders == n
        old, incoming = new.unit.firm[: n - k], new.unit.firm[n - k:]
        assert set(old.tolist()) <= set(prev.unit.firm.tolist())
        assert len(old) == prev.unit.n - row.exits
        assert not set(incoming.tolist()) & set(prev.unit.firm.tolist())
        assert new.unit.ceiling == pytest.approx(min(float(np.nanmax(prev.award.price)), prev.unit.ceiling))
        finite = np.isfinite(new.bids)
        assert (new.bids[finite] <= new.unit.ceiling * (1 + 1e-12)).all()
        seen += k
    assert seen > 0


@pytest.mark.parametrize("policy", ["max_winning", "first_ceiling"])
def test_retender_ceiling(files, policy):
    sets = [*RETENDER, "dynamics.renewal_years=1", "dynamics.entry_rate=1", f"dynamics.renewal_ceiling={policy}"]
    t = frames_of(files["small"], sets, reps=(0, 1))["tenders"]
    later = with_previous(t)
    assert (later["tender"] >= 2).any()  # ceilings chain over several re-tenders
    first = t[t["tender"] == 0].set_index(KEY)["ceiling_ratio"]
    first_ceiling = first.loc[list(later[KEY].itertuples(index=False, name=None))].to_numpy()
    assert (later["ceiling_ratio"].to_numpy() <= first_ceiling * (1 + 1e-12)).all()
    if policy == "max_winning":
        np.testing.assert_allclose(later["ceiling_ratio"], later["top_price_ratio_prev"], rtol=1e-12)
        assert (later["ceiling_ratio"] < first_ceiling).any()
    else:
        np.testing.assert_allclose(later["ceiling_ratio"], first_ceiling, rtol=1e-12)
    # drug ceilings are caps: nobody wins a re-tender above its ceiling
    won = later[later["procured"]]
    assert (won["top_price_ratio"] <= won["ceiling_ratio"] * (1 + 1e-12)).all()


def test_stent_retender_winners_stay_within_the_renewal_ceiling(files):
    sets = [*RETENDER, "dynamics.renewal_years=1", "dynamics.entry_rate=1", "dynamics.outside_option=0.1"]
    t = frames_of(files["stents"], sets, reps=(0, 1, 2))["tenders"]
    renewal = t[(t["round"] == "stents") & (t["tender"] > 0) & t["procured"]]
    assert len(renewal) > 0
    assert (renewal["top_price_ratio"] <= renewal["ceiling_ratio"] * (1 + 1e-12)).all()


# ---------------------------------------------------------------------------------------------
# the model: supply failures, backups and shortages


def test_supply_without_failures_or_binding_capacity_delivers_what_was_agreed(files):
    off = frames_of(files["small"], reps=(0,))["deliveries"]
    on = frames_of(files["small"], [*SUPPLY, "dynamics.failure_prob=0", "dynamics.capacity_binds=false"],
                   reps=(0,))["deliveries"]
    assert len(on) == len(off) > 0
    for col in ("backup_units", "shortage_units", "shortage_days", "failures"):
        assert (on[col] == 0).all(), col
    a, b = off.sort_values(["round", "month"]), on.sort_values(["round", "month"])
    np.testing.assert_array_equal(a["month"], b["month"])
    for col in ("units", "spend", "spend_ref", "savings"):
        np.testing.assert_allclose(b[col], a[col], rtol=1e-9)
    np.testing.assert_array_equal(a["active_units"], b["active_units"])


@pytest.fixture(scope="module")
def shocks(files):
    """Supply with frequent failures, under the rulebooks and with one winner per molecule."""
    sets = [*SUPPLY, "dynamics.failure_prob=0.3"]
    base = frames_of(files["small"], sets, reps=(0, 1, 2))["deliveries"]
    single = frames_of(files["small"], [*sets, "rules.max_winners_cap=1"], reps=(0, 1, 2))["deliveries"]
    return base, single


def test_failures_bring_backups_and_shortages(shocks):
    base, _ = shocks
    assert base["failures"].sum() > 0
    assert base["backup_units"].sum() > 0 and base["shortage_units"].sum() > 0
    assert (base["shortage_days"] >= 0).all()
    # the single-winner pilot has no backups
    assert (base.loc[base["round"] == "pilot", "backup_units"] == 0).all()
    # a month of shortage counts at most one month of days per unit under contract
    assert (base["shortage_days"] <= 31 * base["active_units"] + 1e-9).all()


def test_single_winner_molecules_have_no_backup_and_more_shortage(shocks):
    base, single = shocks
    assert (single["backup_units"] == 0).all()
    assert single["shortage_units"].sum() > base["shortage_units"].sum()
    assert single["shortage_days"].sum() > base["shortage_days"].sum()
    # the pilot is single-winner already: its supply draws are the same in both (common random numbers)
    pd.testing.assert_frame_equal(base[base["round"] == "pilot"].reset_index(drop=True),
                                  single[single["round"] == "pilot"].reset_index(drop=True))


# ---------------------------------------------------------------------------------------------
# the model: adaptive bidders


ADAPTIVE = ["agents.strategy=adaptive"]


def test_adaptive_bidders_are_reproducible_and_bid_within_reserve_and_ceiling(files):
    a = frames_of(files["small"], ADAPTIVE, reps=(0, 1))
    b = frames_of(files["small"], ADAPTIVE, reps=(0, 1))
    pd.testing.assert_frame_equal(a["bids"], b["bids"])
    bids = a["bids"]
    finite = np.isfinite(bids["bid"])
    assert finite.sum() > 20
    ok = bids[finite]
    assert (ok["bid"] >= ok["reserve"] * (1 - 1e-12)).all()
    assert (ok["bid"] <= ok["ceiling"] * (1 + 1e-12)).all()
    assert (bids.loc[~finite, "reserve"] > bids.loc[~finite, "ceiling"]).all()
    # not every bid sits at an end of the range
    inside = (ok["bid"] > ok["reserve"] * 1.001) & (ok["bid"] < ok["ceiling"] * 0.999)
    assert inside.any()


def _margin_share(bids: pd.DataFrame) -> pd.Series:
    ok = bids[np.isfinite(bids["bid"]) & (bids["ceiling"] > bids["reserve"])]
    return (ok["bid"] - ok["reserve"]) / (ok["ceiling"] - ok["reserve"])


def test_adaptive_bidders_learn_between_rounds(files):
    learning = frames_of(files["small"], [*ADAPTIVE, "agents.adaptive_rate=5"], reps=(0, 1))["bids"]
    frozen = frames_of(files["small"], [*ADAPTIVE, "agents.adaptive_rate=0"], reps=(0, 1))["bids"]
    first = learning["round"] == "pilot"
    # nobody has seen an award before the first round: the same draws give the same bids
    pd.testing.assert_frame_equal(learning[first], frozen[first])
    later = (~first).to_numpy()
    assert not np.allclose(learning.loc[later, "bid"], frozen.loc[later, "bid"], equal_nan=True)
    assert _margin_share(learning[later]).mean() != pytest.approx(_margin_share(frozen[later]).mean(), abs=1e-3)


def test_the_learner_holds_weights_after_the_run(files):
    scenario = load_scenario(files["small"], [*ADAPTIVE, *RETENDER])
    sim = Simulation(scenario, SEED, 0)
    env = simpy.Environment()
    env.process(procurement_office(env, sim))
    env.run()
    weights = sim.learner.snapshot()
    assert weights
    grid = scenario.agents.adaptive_grid
    for p in weights.values():
        assert p.shape == (grid,) and p.sum() == pytest.approx(1.0)
    assert any(np.ptp(p) > 1e-3 for p in weights.values()), "some firm moved away from uniform weights"
    assert {cat for _, cat in weights} == {"drug"}


# ---------------------------------------------------------------------------------------------
# determinism with every dynamic on


def test_worker_count_does_not_change_dynamic_results(files):
    scenario = load_scenario(files["small"], [
        *ADAPTIVE, *RETENDER, *SUPPLY, "dynamics.outside_option=0.1", "dynamics.entry_rate=0.5",
        "dynamics.failure_prob=0.05", "dynamics.renewal_years=1"])
    a = run(scenario, replications=3, seed=SEED, workers=1)
    b = run(scenario, replications=3, seed=SEED, workers=2)
    assert set(a.frames) >= {"bids", "units", "tenders", "deliveries", "events"}
    assert (a.frames["tenders"]["tender"] > 0).any() and a.frames["deliveries"]["failures"].sum() > 0
    for name in a.frames:
        pd.testing.assert_frame_equal(a.frames[name], b.frames[name])


# ---------------------------------------------------------------------------------------------
# planner mode: N-1 backup coverage


def _n_minus_1_violations(files, backup: bool) -> tuple[int, int]:
    """(units checked, units whose winners lose coverage of the agreed volume if the largest fails)."""
    sets = ["optimizer.mode=planner", f"optimizer.backup_coverage={str(backup).lower()}",
            "optimizer.min_suppliers=2", "agents.capacity_low=0.5", "agents.capacity_high=1.2"]
    scenario = load_scenario(files["batch2"], sets)
    reps = (0, 1, 2)
    f = frames_of(files["batch2"], sets, reps=reps)
    bids, units = f["bids"], f["units"].set_index(KEY)
    checked = bad = 0
    for rep in reps:
        sim = Simulation(scenario, SEED, rep)  # regenerates the same units: capacities are not recorded
        for rnd in scenario.rounds:
            for u in sim.open_round(rnd):
                if units.loc[(rep, rnd.id, u.index), "method"] != "planner":
                    continue
                b = bids[(bids["rep"] == rep) & (bids["round"] == rnd.id) & (bids["unit"] == u.index)]
                b = b.sort_values("bidder")
                valid = np.isfinite(b["bid"].to_numpy()) & (b["bid"] <= b["ceiling"]).to_numpy()
                won = b["won"].to_numpy()
                assert not (won & ~valid).any()
                volume = b.loc[b["won"], "agreed_units"].sum()
                caps = np.sort(u.capacity[valid])[::-1]
                if caps[1:].sum() < volume:
                    continue  # no winner set can be N-1 secure: the constraint is dropped
                checked += 1
                mine = u.capacity[won]
                bad += won.sum() < 2 or mine.sum() - mine.max() < volume * (1 - 1e-9)
    return checked, bad


def test_planner_backup_coverage_survives_the_loss_of_any_winner(files):
    checked, bad = _n_minus_1_violations(files, backup=True)
    assert checked >= 10 and bad == 0
    # without the constraint the cheapest two winners often cannot cover for each other
    checked, bad = _n_minus_1_violations(files, backup=False)
    assert bad > 0


def test_planner_problem_with_backup_known_answer():
    # four provinces of 25; capacities 60, 60, 50, 100. Without backup the two cheapest suffice;
    # N-1 needs a third winner, and {0, 1, 2} is cheaper than {0, 1, 3}.
    args = dict(bid=[1.0, 2.0, 3.0, 4.0], eligible=[True] * 4, demand=[25.0] * 4, capacity=[60.0, 60.0, 50.0, 100.0])
    won, _ = wdp.plan(wdp.PlannerProblem(**args))
    np.testing.assert_array_equal(won, [True, True, False, False])
    won, alloc = wdp.plan(wdp.PlannerProblem(**args, backup=True))
    np.testing.assert_array_equal(won, [True, True, True, False])
    caps = np.array(args["capacity"])[won]
    assert (caps.sum() - caps >= 100.0).all()
    assert alloc.volume.sum() == pytest.approx(100.0)
    assert alloc.objective == pytest.approx(50 * 1.0 + 25 * 2.0 + 25 * 3.0)


def test_planner_without_any_n_minus_1_set_is_infeasible():
    problem = wdp.PlannerProblem([1.0, 2.0], [True, True], [50.0, 50.0], [60.0, 60.0], backup=True,
                                 label="two small")
    with pytest.raises(wdp.AllocationError, match="infeasible") as err:
        wdp.plan(problem)
    assert "two small" in str(err.value)
    won, _ = wdp.plan(wdp.PlannerProblem([1.0, 2.0], [True, True], [50.0, 50.0], [60.0, 60.0]))
    assert won.all()


# ---------------------------------------------------------------------------------------------
# metrics


def _tender(rep, rnd, unit, tender, procured, price, hhi_, top, exits=0, entrants_=0, n=3):
    return dict(rep=rep, round=rnd, unit=unit, label=f"{rnd}/m{unit}", tender=tender, date=f"202{tender}-01-01",
                n_bidders=n, exits=exits, entrants=entrants_, n_winners=int(procured), procured=procured,
                ceiling_ratio=1.0, price_ratio=price, top_price_ratio=price, hhi=hhi_, top_share=top,
                contract_years=1)


def _delivery(rep, rnd, units, backup, shortage, days, failures):
    return dict(rep=rep, round=rnd, month="2021-01-01", units=units, spend=0.0, spend_ref=0.0, savings=0.0,
                active_units=1, backup_units=backup, shortage_units=shortage, shortage_days=days, failures=failures)


@pytest.fixture
def hand_frames():
    nan = float("nan")
    tenders = pd.DataFrame([
        _tender(0, "a", 0, 0, True, 0.5, 0.5, 0.6, n=4),
        _tender(0, "a", 0, 1, True, 0.4, 1.0, 1.0, exits=2, entrants_=1, n=3),
        _tender(0, "a", 1, 0, True, 0.2, 1.0, 1.0),
        _tender(0, "a", 1, 1, False, nan, nan, nan, exits=3),
        _tender(0, "b", 0, 0, False, nan, nan, nan),
        _tender(0, "b", 1, 0, True, 0.8, 0.7, 0.8),
        _tender(1, "a", 0, 0, True, 0.3, 0.9, 0.95),
    ])
    deliveries = pd.DataFrame([
        _delivery(0, "a", 90.0, 10.0, 10.0, 3.0, 1),
        _delivery(0, "a", 100.0, 0.0, 0.0, 0.0, 0),
        _delivery(0, "b", 50.0, 0.0, 50.0, 15.0, 2),
    ])
    units = pd.DataFrame({"rep": [0, 0, 1], "round": ["a", "b", "a"], "unit": [0, 0, 0]})
    return {"units": units, "tenders": tenders, "deliveries": deliveries}


def test_dynamics_metrics_known_answers(hand_frames):
    m = dynamics_metrics(hand_frames)
    assert list(m.index) == [0, 1]
    r0, r1 = m.loc[0], m.loc[1]
    assert r0["shortage_share"] == pytest.approx(60 / 300)  # due = delivered 240 + short 60
    assert r0["backup_share"] == pytest.approx(10 / 300)
    assert r0["shortage_days"] == pytest.approx(18.0)
    assert r0["failures"] == 3
    assert r0["hhi"] == pytest.approx((0.5 + 1.0 + 0.7) / 3)  # procured first awards only
    assert r0["top_share"] == pytest.approx((0.6 + 1.0 + 0.8) / 3)
    assert r0["renewals"] == 2 and r0["exits"] == 5 and r0["entrants"] == 1
    assert r0["renewal_hhi"] == pytest.approx(1.0)
    assert r0["renewal_price_change"] == pytest.approx(0.4 / 0.5 - 1)
    assert r0["renewal_unprocured"] == pytest.approx(0.5)
    # replication 1 delivered nothing and held no re-tender
    assert r1["shortage_share"] == 0 and r1["backup_share"] == 0 and r1["failures"] == 0
    assert r1["renewals"] == 0 and r1["exits"] == 0
    assert r1["hhi"] == pytest.approx(0.9)
    assert np.isnan(r1["renewal_price_change"]) and np.isnan(r1["renewal_unprocured"])
    only_b = dynamics_metrics(hand_frames, ["b"]).loc[0]
    assert only_b["shortage_share"] == pytest.approx(0.5)
    assert only_b["hhi"] == pytest.approx(0.7) and only_b["renewals"] == 0


def test_renewal_prices_known_answers(hand_frames):
    rp = renewal_prices(hand_frames["tenders"])
    assert len(rp) == 2
    assert list(rp[["round", "unit", "tender"]].itertuples(index=False, name=None)) == [("a", 0, 1), ("a", 1, 1)]
    first = rp.iloc[0]
    assert first["price_ratio_first"] == 0.5 and first["price_ratio"] == 0.4
    assert first["price_change"] == pytest.approx(-0.2)
    assert first["n_bidders_first"] == 4 and first["n_bidders"] == 3
    assert first["hhi_first"] == 0.5 and first["hhi"] == 1.0
    assert first["exits"] == 2 and first["entrants"] == 1
    assert np.isnan(rp.iloc[1]["price_change"]) and not rp.iloc[1]["procured"]


# ---------------------------------------------------------------------------------------------
# the command line


def test_designs_command_json_and_out(files, tmp_path):
    out = tmp_path / "designs"
    result = CliRunner().invoke(cli, ["designs", str(files["small"]), "-n", "2", "--workers", "1", "--quiet",
                                      "--json", "--out", str(out), "--set", "dynamics.supply=true"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    doc = json.loads(result.stdout)
    assert doc["replications"] == 2
    rows = doc["rows"]
    assert {r["design"] for r in rows} == set(DESIGNS)
    cost = [r for r in rows if r["metric"] == "cost_of_rules"]
    assert {r["design"] for r in cost} == {"planner", "planner_secure"}
    assert all(r["n"] == 2 for r in cost)
    for metric in DESIGN_METRICS:
        assert {r["design"] for r in rows if r["metric"] == metric} == set(DESIGNS), metric
    assert {p.name for p in out.iterdir()} >= {"designs.csv", "manifest.json"}
    table = pd.read_csv(out / "designs.csv")
    assert len(table) == len(rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "designs" and manifest["replications"] == 2
    assert set(manifest["scenario_sha256"]) == set(DESIGNS)
    assert len(set(manifest["scenario_sha256"].values())) == 3


def test_designs_command_bad_set_path(files):
    result = CliRunner().invoke(cli, ["designs", str(files["small"]), "-n", "1", "--workers", "1", "--quiet",
                                      "--set", "dynamics.failure_chance=0.5"])
    assert result.exit_code == 2
    assert "dynamics.failure_chance" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_run_command_writes_retenders(files, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(files["small"]), "-n", "1", "--workers", "1", "--quiet",
                                      "--set", "market.renewal=retender", "--set", "dynamics.entry_rate=1",
                                      "--out", str(out)])
    assert result.exit_code == 0, (result.stderr, result.exception)
    tenders = pd.read_parquet(out / "tenders.parquet")
    assert (tenders["tender"] >= 1).any() and (tenders["tender"] == 0).any()
    assert set(tenders.columns) >= {"exits", "entrants", "ceiling_ratio", "hhi"}


# ---------------------------------------------------------------------------------------------
# pairing, capacity scale, and exits that stick


def test_failure_draws_belong_to_the_unit_and_bidder_not_to_the_line_order(files):
    scenario = load_scenario(files["small"], SUPPLY)
    sim = Simulation(scenario, SEED, 0)
    rnd = scenario.round("batch2")
    awarded = [a for a in sim.award_round(rnd, sim.open_round(rnd)) if a.procured]
    multi = next(i for i, a in enumerate(awarded) if a.award.won.sum() >= 2)
    fewer = list(awarded)
    won = awarded[multi].award.won.copy()
    won[np.flatnonzero(won)[-1]] = False  # one winner fewer in one unit: every later line shifts
    fewer[multi] = AwardedUnit(awarded[multi].unit, Award(won=won, price=awarded[multi].award.price,
                                                          agreed=awarded[multi].award.agreed, n_valid=0,
                                                          n_winners=int(won.sum())),
                               np.where(won, awarded[multi].agreed, 0.0), True, "awarded", 1,  # a 1-year term
                               awarded[multi].bids)
    a, b = sim.contract_book(rnd, awarded), sim.contract_book(rnd, fewer)
    assert len(a.lines()[0]) == len(b.lines()[0]) + 1
    for month in (0, 5, 11):
        da, db = (dict(zip(zip(*book.lines()[:2]), zip(*book.month_draws(month)))) for book in (a, b))
        shared = set(da) & set(db)
        assert len(shared) == len(db) > 0
        assert all(da[key] == db[key] for key in shared)


def test_without_failures_binding_capacity_leaves_nothing_short(files):
    # capacity is on the scale of reported demand, like agreed volumes; purchases scale both
    d = frames_of(files["small"], [*SUPPLY, "dynamics.failure_prob=0", "dynamics.capacity_binds=true",
                                   "market.completion_ratio=3.0"], reps=(0, 1))["deliveries"]
    assert d["shortage_units"].sum() == 0 and d["backup_units"].sum() == 0 and d["units"].sum() > 0


def test_firms_that_left_a_market_do_not_come_back(files):
    scenario = load_scenario(files["small"], [*RETENDER, "dynamics.entry_rate=8", "dynamics.outside_option=0.3",
                                              "agents.firm_pool=40"])
    sim = Simulation(scenario, SEED, 0)
    rnd = scenario.round("batch2")
    left_total = 0
    for prev in (a for a in sim.award_round(rnd, sim.open_round(rnd)) if a.procured):
        first = sim.retender(rnd, prev, 1, 400.0)
        second = sim.retender(rnd, first, 2, 800.0)
        assert set(first.left.tolist()) <= set(second.left.tolist())
        newcomers = set(second.unit.firm.tolist()) - set(first.unit.firm.tolist())
        assert not newcomers & set(first.left.tolist())
        left_total += len(first.left)
    assert left_total > 0


def test_designs_refuses_to_override_what_the_designs_set_and_scenarios_without_drugs(files, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["designs", str(files["batch2"]), "-n", "1", "--quiet",
                            "--set", "optimizer.mode=planner"])
    assert r.exit_code == 2 and "optimizer.mode" in r.output and "Traceback" not in r.output
    stents = tmp_path / "stents.toml"
    stents.write_text('name = "s"\nend = "2022-12-31"\nrounds = ["stents"]\n')
    r = runner.invoke(cli, ["designs", str(stents), "-n", "1", "--quiet"])
    assert r.exit_code == 2 and "no drug round" in r.output and "Traceback" not in r.output
