"""One replication of a scenario: agents, rounds, awards and contracts on a SimPy clock.

`run_replication(scenario, seed, rep)` is a pure function of its arguments: every random number
comes from a named sub-stream of `SeedSequence([seed, rep, stream, key])`, so counterfactual
scenarios that share a seed share costs, demand and bidders (common random numbers), and results do
not depend on which worker ran the replication.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import zlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import simpy

from vbp import rules, wdp
from vbp.data import provinces
from vbp.errors import SimulationError
from vbp.market import FirmPool, Unit, cost_distribution, generate_units, make_firm_pool
from vbp.process import procurement_office
from vbp.records import BidRow, DeliveryRow, EventRow, Replication, UnitRow
from vbp.scenario import Round, RuleOverrides, Scenario
from vbp.strategies import BidContext, make_strategy

__all__ = ["run_replication", "Simulation", "effective_rulebook", "rng_for", "AwardedUnit",
           "bidders_bucket", "bidders_view"]

STREAMS = {"firms": 1, "market": 2, "ties": 3, "supply": 4}


def rng_for(seed: int, rep: int, stream: str, key: str = "") -> np.random.Generator:
    """The generator of one named sub-stream (and optional key, e.g. a round id) of a replication."""
    words = [seed, rep, STREAMS[stream], zlib.crc32(key.encode())]
    return np.random.default_rng(np.random.SeedSequence(words))


def effective_rulebook(rb: rules.Rulebook, policy: RuleOverrides) -> rules.Rulebook:
    """Apply the scenario's global rule levers to a multi-winner rulebook (others pass through)."""
    if rb.kind != "multi_winner":
        return rb
    changes: dict = {}
    shares = list(rb.volume_shares) + [rb.volume_shares[-1]] * max(0, 4 - len(rb.volume_shares))
    for i, name in enumerate(("volume_share_1", "volume_share_2", "volume_share_3", "volume_share_4plus")):
        value = getattr(policy, name)
        if value is not None:
            shares[i] = value
    if shares[: len(rb.volume_shares)] != list(rb.volume_shares) or len(shares) != len(rb.volume_shares):
        changes["volume_shares"] = tuple(shares)
    if policy.gate_ratio is not None and rb.gate_ratio is not None:
        changes["gate_ratio"] = policy.gate_ratio
    if policy.safe_harbour is False:
        changes["safe_harbour_cut"] = None
    elif policy.safe_harbour is True and rb.safe_harbour_cut is None:
        changes["safe_harbour_cut"] = 0.5
    if policy.max_winners_cap is not None:
        changes["max_winners"] = tuple(min(m, policy.max_winners_cap) for m in rb.max_winners)
    if policy.anchor_mean_factor is not None:
        changes["anchor_mean_factor"] = policy.anchor_mean_factor
    return dataclasses.replace(rb, **changes) if changes else rb


@dataclass(frozen=True)
class AwardedUnit:
    """A unit after the award: who won at what price and how much each winner must supply."""

    unit: Unit
    award: rules.Award
    agreed: np.ndarray  # (n,) first-year agreed units
    procured: bool
    status: str
    contract_years: int
    bids: np.ndarray  # (n,) sealed bids, yuan per unit; nan = no bid
    provinces_won: np.ndarray | None = None  # (n,) provinces each winner supplies (drugs)
    method: str = "none"  # how the volume was allocated: trivial | assignment | milp | planner | brand | none
    objective: float = float("nan")  # allocation cost, yuan


@dataclass
class ContractBook:
    """Monthly deliveries of one round's procured units, precomputed as arrays."""

    monthly_units: np.ndarray  # (U,) winners' purchases per month, units
    monthly_spend: np.ndarray  # (U,) yuan
    monthly_spend_ref: np.ndarray  # (U,) yuan
    term_months: np.ndarray  # (U,)
    extend: bool

    def expiring(self, month: int) -> int:
        """Units whose contract term ends at the start of this month of supply."""
        return int((self.term_months == month).sum()) if month > 0 else 0

    def active(self, month: int) -> np.ndarray:
        return np.ones_like(self.term_months, dtype=bool) if self.extend else self.term_months > month


class Simulation:
    """State of one replication; the SimPy processes call its methods."""

    def __init__(self, scenario: Scenario, seed: int, rep: int):
        self.scenario = scenario
        self.seed = seed
        self.rep = rep
        self.record = Replication(rep=rep)
        self.pool: FirmPool = make_firm_pool(scenario.agents, rng_for(seed, rep, "firms"))
        self.strategy = make_strategy(scenario.agents.strategy, **_strategy_params(scenario))
        self.horizon = self.day(scenario.end) + 1.0
        self.prices: dict[str, dict[int, float]] = {}  # round -> molecule index -> lowest winning price
        self._distance = provinces().distance_km()
        self.solve_s = 0.0

    # -- clock ---------------------------------------------------------------------------------
    def day(self, date: dt.date) -> float:
        return float((date - self.scenario.start).days)

    def date(self, day: float) -> dt.date:
        return self.scenario.start + dt.timedelta(days=int(day))

    def next_month_day(self, day: float) -> float:
        d = self.date(day)
        first = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)
        return self.day(first)

    def supply_start_day(self, rnd: Round) -> float:
        """First day of the month in which supply starts (bid date + implementation lag)."""
        d = rnd.bid_date
        months = int(rnd.supply_lag_months + 0.5)  # half months round up (3.5 -> 4)
        y, m = divmod(d.month - 1 + months, 12)
        return self.day(dt.date(d.year + y, m + 1, 1))

    def log(self, day: float, kind: str, round_id: str, detail: str = "") -> None:
        self.record.events.append(EventRow(self.rep, float(day), kind, round_id, detail))

    # -- rounds --------------------------------------------------------------------------------
    def open_round(self, rnd: Round) -> list[Unit]:
        """Generate the round's molecules and bidders; apply a ceiling from an earlier round."""
        rng = rng_for(self.seed, self.rep, "market", rnd.id)
        units = generate_units(rnd, self.scenario.agents, self.scenario.market, self.pool, rng)
        if rnd.ceiling_from is not None:
            # The earlier round's procured molecules, in order, are this round's molecules: bids are
            # capped at the earlier lowest winning price (carried as a fraction of the reference).
            earlier = self.prices.get(rnd.ceiling_from, {})
            ratios = [earlier[k] for k in sorted(earlier)]
            units = [dataclasses.replace(u, ceiling=min(u.ceiling, ratios[u.index] * u.norm_price))
                     if u.index < len(ratios) else u for u in units]
        return units

    def award_round(self, rnd: Round, units: list[Unit]) -> list[AwardedUnit]:
        """Bids, awards by the rulebook, allocation by the optimizer; records every bid and unit."""
        rb = effective_rulebook(self.scenario.rulebook(rnd.rulebook), self.scenario.rules)
        ties = rng_for(self.seed, self.rep, "ties", rnd.id)
        awarded = [self._award_unit(rnd, rb, u, ties) for u in units]
        if rb.kind == "single_winner":
            awarded = self._resolve_pre_awards(rb, awarded)
        self.prices[rnd.id] = {a.unit.index: float(np.nanmin(a.award.price)) / a.unit.norm_price
                               for a in awarded if a.procured}
        awarded = [self._allocate(rnd, a) for a in awarded]
        for a in awarded:
            self._record(rnd, a)
        return awarded

    def _bids(self, rnd: Round, rb: rules.Rulebook, u: Unit) -> np.ndarray:
        scale = u.norm_price
        ceiling = u.ceiling / scale
        # Bid functions are cached per (bidders, rules, ceiling): bidders plan for a ceiling on a
        # 5% log grid; the award itself uses the exact ceiling.
        ceil_q = float(np.exp(np.round(np.log(ceiling) / 0.05) * 0.05))
        rb_eq = bidders_view(rb)
        ctx = BidContext(
            n_bidders=bidders_bucket(u.n), ceiling=ceil_q,
            award_fn=partial(rules.award_fractions, rb_eq, ceiling=ceil_q),
            award_key=(rb_eq, ceil_q), costs=cost_distribution(self.scenario.agents, rnd.category),
            ceiling_is_cap=rb.ceiling_is_cap,
        )
        frac = self.strategy.bids(u.reserve / scale, ctx)
        if rb.ceiling_is_cap:
            frac = np.where(frac > ceiling, np.where(u.reserve / scale <= ceiling, ceiling, np.nan), frac)
        return frac * scale

    def _award_unit(self, rnd: Round, rb: rules.Rulebook, u: Unit, ties: np.random.Generator) -> AwardedUnit:
        bids = self._bids(rnd, rb, u)
        # Ties in price are broken at random (the rules rank equal prices by input order).
        order = ties.permutation(u.n)
        inv = np.argsort(order)
        share = None if u.demand_share is None else u.demand_share[order]
        if self.scenario.optimizer.mode == "planner" and rnd.category == "drug":
            return self._plan_unit(rnd, rb, u, bids)
        a = rules.award(rb, bids[order], u.ceiling, reserve=u.reserve[order], firm=u.firm[order],
                        demand_share=share)
        a = rules.Award(won=a.won[inv], price=a.price[inv], agreed=a.agreed[inv], n_valid=a.n_valid,
                        n_winners=a.n_winners, pre_award=a.pre_award, reason=a.reason)
        procured = a.n_winners > 0
        years = rnd.contract_years or rules.contract_years_for(rb, max(a.n_winners, 1))
        return AwardedUnit(u, a, a.agreed * u.demand, procured, "awarded" if procured else a.reason, years, bids)

    def _plan_unit(self, rnd, rb, u, bids) -> AwardedUnit:
        """Planner mode: the MILP chooses the winners among valid bids and allocates provinces."""
        opt = self.scenario.optimizer
        valid = np.isfinite(bids) & (bids <= u.ceiling)
        if not valid.any():
            empty = rules.Award(won=np.zeros(u.n, bool), price=np.full(u.n, np.nan), agreed=np.zeros(u.n),
                                n_valid=0, n_winners=0, reason="no valid bids")
            return AwardedUnit(u, empty, np.zeros(u.n), False, "no valid bids", 1, bids)
        k_cap = rules.max_winners_for(rb, int(valid.sum()))
        share = rules.volume_share_for(rb, k_cap)
        problem = wdp.PlannerProblem(
            bid=np.where(valid, bids, 0.0), eligible=valid, demand=u.province_demand * share,
            capacity=u.capacity, logistics=self._logistics(u, np.arange(u.n)), max_winners=k_cap,
            min_suppliers=min(opt.min_suppliers, int(valid.sum())), max_share=opt.max_share, label=u.label)
        try:
            won, alloc = wdp.plan(problem, time_limit=opt.time_limit)
        except wdp.AllocationError as exc:
            raise SimulationError(f"round {rnd.id}, {u.label}: {exc}") from None
        self.solve_s += alloc.solve_s
        agreed = np.zeros(u.n)
        agreed[won] = alloc.volume
        provinces_won = np.zeros(u.n, dtype=int)
        provinces_won[won] = np.bincount(alloc.supplier, minlength=int(won.sum()))
        a = rules.Award(won=won, price=np.where(won, bids, np.nan), agreed=agreed / max(u.demand, 1e-12),
                        n_valid=int(valid.sum()), n_winners=int(won.sum()))
        years = rnd.contract_years or rules.contract_years_for(rb, max(a.n_winners, 1))
        return AwardedUnit(u, a, agreed, True, "awarded", years, bids, provinces_won, "planner",
                           alloc.objective)

    def _resolve_pre_awards(self, rb: rules.Rulebook, awarded: list[AwardedUnit]) -> list[AwardedUnit]:
        """Pilot: provisional single-bidder awards win outright or go to negotiation."""
        pre = [i for i, a in enumerate(awarded) if a.procured and a.award.pre_award]
        if not pre:
            return awarded
        full = [a for a in awarded if a.procured and not a.award.pre_award]
        cut_of = lambda a: 1.0 - float(np.nanmin(a.award.price)) / a.unit.norm_price  # noqa: E731
        reference = float(np.mean([cut_of(a) for a in full])) if full else 0.5
        cuts = np.array([cut_of(awarded[i]) for i in pre])
        accept = np.array([1.0 - awarded[i].unit.reserve[awarded[i].award.won][0] / awarded[i].unit.norm_price
                           for i in pre])
        outcome = rules.resolve_pre_awards(cuts, reference, rb.pre_award_outright, accept)
        out = list(awarded)
        outright = set(np.array(pre)[np.argsort(-cuts, kind="stable")[: rb.pre_award_outright]].tolist())
        for j, i in enumerate(pre):
            a = awarded[i]
            if not outcome[j]:
                dead = dataclasses.replace(a.award, won=np.zeros_like(a.award.won),
                                           price=np.full_like(a.award.price, np.nan),
                                           agreed=np.zeros_like(a.award.agreed), n_winners=0,
                                           reason="negotiation failed")
                out[i] = dataclasses.replace(a, award=dead, agreed=np.zeros_like(a.agreed), procured=False,
                                             status="negotiation failed")
            elif i not in outright:
                target = a.unit.norm_price * (1.0 - reference)
                price = np.where(a.award.won, np.minimum(a.award.price, target), np.nan)
                out[i] = dataclasses.replace(a, award=dataclasses.replace(a.award, price=price),
                                             status="negotiated")
        return out

    def _logistics(self, u: Unit, bidders: np.ndarray) -> np.ndarray:
        rate = self.scenario.market.logistics_per_1000km * u.norm_price / 1000.0
        homes = self.pool.home[u.firm[bidders]]
        return rate * self._distance[np.ix_(homes, u.province_idx)]

    def _allocate(self, rnd: Round, a: AwardedUnit) -> AwardedUnit:
        """Province allocation of a drug unit's agreed volume; winners' volumes become what the
        optimizer gives each (device and insulin volumes follow brand-level demand)."""
        u = a.unit
        if u.demand_share is not None:
            return dataclasses.replace(a, method="brand", provinces_won=np.zeros(u.n, dtype=int))
        if not a.procured:
            return dataclasses.replace(a, method="none", provinces_won=np.zeros(u.n, dtype=int))
        if a.provinces_won is not None:  # planner mode allocated already
            return a
        won = np.flatnonzero(a.award.won)
        share = a.agreed[won].sum() / max(u.demand, 1e-12)
        problem = wdp.AllocationProblem(
            price=a.award.price[won], demand=u.province_demand * share,
            capacity=u.capacity[won], logistics=self._logistics(u, won),
            label=f"round {rnd.id}, molecule {u.label}")
        opt = self.scenario.optimizer
        try:
            alloc = wdp.allocate(problem, method=opt.method, time_limit=opt.time_limit)
        except wdp.AllocationError as exc:
            hint = ("the rulebook's winners cannot cover the agreed volume within their capacities "
                    "(raise agents.capacity_low or check the round)" if "nfeasible" in str(exc)
                    else "raise optimizer.time_limit")
            raise SimulationError(f"{exc}; {hint}") from None
        self.solve_s += alloc.solve_s
        provinces_won = np.zeros(u.n, dtype=int)
        provinces_won[won] = np.bincount(alloc.supplier, minlength=len(won))
        agreed = np.zeros(u.n)
        agreed[won] = alloc.volume
        return dataclasses.replace(a, agreed=agreed, provinces_won=provinces_won, method=alloc.method,
                                   objective=alloc.objective)

    def _record(self, rnd: Round, a: AwardedUnit) -> None:
        u, aw = a.unit, a.award
        provinces_won, method, objective = a.provinces_won, a.method, a.objective
        for i in range(u.n):
            self.record.bids.append(BidRow(
                self.rep, rnd.id, u.index, u.label, i, int(u.firm[i]), bool(u.originator[i]),
                float(u.cost[i]), float(u.reserve[i]), float(a.bids[i]),
                float(u.ceiling), float(u.ref_price[i]), bool(aw.won[i]), float(aw.price[i]),
                float(a.agreed[i]), int(provinces_won[i])))
        won = aw.won
        cuts = 1.0 - aw.price[won] / u.ref_price[won]
        savings = float(np.sum((u.ref_price[won] - aw.price[won]) * a.agreed[won]))
        self.record.units.append(UnitRow(
            self.rep, rnd.id, u.index, u.label, u.n, aw.n_valid, aw.n_winners, a.procured, a.status,
            float(cuts.mean()) if a.procured else float("nan"),
            float(cuts.max()) if a.procured else float("nan"),
            float(a.agreed.sum()), float(np.sum(u.ref_price * a.agreed)), savings, a.contract_years,
            method, objective))

    # -- contracts -----------------------------------------------------------------------------
    def contract_book(self, rnd: Round, awarded: list[AwardedUnit]) -> ContractBook:
        """Monthly purchases: winners buy `completion_ratio` x agreed volume / 12 each month."""
        done = [a for a in awarded if a.procured]
        ratio = self.scenario.market.completion_ratio / 12.0
        units = np.array([ratio * a.agreed.sum() for a in done])
        spend = np.array([ratio * np.nansum(a.award.price * a.agreed) for a in done])
        ref = np.array([ratio * np.sum(a.unit.ref_price * a.agreed) for a in done])
        term = np.array([12 * a.contract_years for a in done], dtype=int)
        return ContractBook(units, spend, ref, term, self.scenario.market.renewal == "extend")

    def deliver(self, rnd: Round, book: ContractBook, month: int, day: float) -> None:
        act = book.active(month)
        units, spend, ref = (float(book.monthly_units[act].sum()), float(book.monthly_spend[act].sum()),
                             float(book.monthly_spend_ref[act].sum()))
        self.record.deliveries.append(DeliveryRow(
            self.rep, rnd.id, self.date(day).isoformat(), units, spend, ref, ref - spend, int(act.sum())))


def _strategy_params(scenario: Scenario) -> dict:
    a = scenario.agents
    if a.strategy == "cost_plus":
        return {"markup": a.markup}
    return {"iterations": a.equilibrium_iterations, "samples": a.equilibrium_samples}


_BUCKETS = np.array([14, 17, 20, 24, 28, 33, 40, 48, 60, 80, 120, 200])


def bidders_bucket(n: int) -> int:
    """The number of rivals a bidder plans for: exact up to 12, then on a coarse grid.

    Bid functions barely change between, say, 17 and 18 bidders, and each distinct count costs
    a bid-function solve, so large counts share the nearest grid value.
    """
    if n <= 12:
        return int(n)
    return int(_BUCKETS[np.argmin(np.abs(_BUCKETS - n))])


def bidders_view(rb: rules.Rulebook) -> rules.Rulebook:
    """The rulebook as bidders model it: award logic only (no names, terms or yuan exemption).

    Rulebooks with the same award logic then share bid functions; the 0.10-yuan exemption depends
    on the molecule's price level and is applied in the award itself.
    """
    return dataclasses.replace(rb, name="", description="", contract_years=(1,), gate_abs_yuan=None)


def run_replication(scenario: Scenario, seed: int, rep: int) -> Replication:
    """Simulate the scenario once: returns every bid, award, delivery and timeline event."""
    t0 = time.perf_counter()
    sim = Simulation(scenario, seed, rep)
    env = simpy.Environment()
    env.process(procurement_office(env, sim))
    env.run()
    sim.record.timing = {"wall_s": time.perf_counter() - t0, "solve_s": sim.solve_s}
    return sim.record

