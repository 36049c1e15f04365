"""SimPy processes: the procurement office's timeline and the contracts it starts.

The clock counts days from the scenario start. Processes hold no rule logic: they decide *when*
things happen (announcement, bid opening, award, supply start, monthly deliveries, expiry and
renewal or re-tender) and call the model for *what* happens. Rounds open in date order; each award starts one
contract process, so contracts of different rounds run side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import simpy

if TYPE_CHECKING:  # pragma: no cover
    from vbp.model import Simulation

__all__ = ["procurement_office", "contract"]


def procurement_office(env: simpy.Environment, sim: Simulation):
    """Open each round on its date: announce, collect sealed bids over the window, award."""
    for rnd in sim.scenario.rounds:
        bid_day = sim.day(rnd.bid_date)
        announce_day = max(env.now, bid_day - sim.scenario.market.bidding_window_days)
        yield env.timeout(announce_day - env.now)
        sim.log(env.now, "announce", rnd.id)
        units = sim.open_round(rnd)
        yield env.timeout(max(0.0, bid_day - env.now))
        sim.log(env.now, "bids_open", rnd.id, f"{sum(u.n for u in units)} products")
        awarded = sim.award_round(rnd, units)
        sim.log(env.now, "award", rnd.id, f"{sum(a.procured for a in awarded)} of {len(awarded)} procured")
        env.process(contract(env, sim, rnd, awarded))
    yield env.timeout(max(0.0, sim.horizon - env.now))
    sim.log(env.now, "end", "")


def contract(env: simpy.Environment, sim: Simulation, rnd, awarded):
    """Supply starts after the implementation lag; winners deliver monthly until the horizon.

    Each unit's contract ends after its term; by the renewal policy it is then extended at its
    price, stopped, or re-tendered among the firms still in its market (re-tenders happen on this
    clock, so adaptive bidders carry what they learned into them).
    """
    start = sim.supply_start_day(rnd)
    if start >= sim.horizon:
        return
    yield env.timeout(max(0.0, start - env.now))
    sim.log(env.now, "supply_start", rnd.id)
    book = sim.contract_book(rnd, awarded)
    month = 0
    while env.now < sim.horizon:
        sim.expire(rnd, book, month, env.now)
        sim.deliver(rnd, book, month, env.now)
        next_day = sim.next_month_day(env.now)
        yield env.timeout(next_day - env.now)
        month += 1
