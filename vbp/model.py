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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import simpy

from vbp import dynamics, learning, rules, wdp
from vbp.data import provinces
from vbp.errors import SimulationError
from vbp.market import (
    FirmPool,
    Unit,
    cost_distribution,
    entrants,
    generate_units,
    make_firm_pool,
    top_up,
    with_cost_level,
)
from vbp.process import procurement_office
from vbp.records import BidRow, DeliveryRow, EventRow, Replication, TenderRow, UnitRow
from vbp.scenario import Round, RuleOverrides, Scenario
from vbp.strategies import BidContext, make_strategy

__all__ = ["run_replication", "Simulation", "effective_rulebook", "rng_for", "AwardedUnit",
           "bidders_bucket", "bidders_view"]

STREAMS = {"firms": 1, "market": 2, "ties": 3, "supply": 4, "learning": 5, "dynamics": 6, "top-up": 7}


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
    left: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=int))  # firms that left


@dataclass
class ContractBook:
    """One round's procured units under contract: the current award of each, its term, its supply.

    Months count from the round's supply start. Without supply dynamics a unit's monthly purchases
    are aggregated; with them, deliveries are worked out winner line by winner line, and each
    unit's failure draws for a term come from a stream keyed by the unit and the term, indexed by
    bidder, so scenarios that share a unit's bidders share its winners' failures.
    """

    awarded: list[AwardedUnit]  # (U,) current award of each procured unit
    end_month: np.ndarray  # (U,) month at which the current term ends
    active: np.ndarray  # (U,) bool: under contract
    tender: np.ndarray  # (U,) re-tenders so far
    ratio: float  # purchases per month / agreed annual volume (completion ratio / 12)
    # supply dynamics: draw(k, term) -> (uniforms, failure lengths), each (months of the term, bidders)
    draw: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        self.monthly = np.array([self._monthly(a) for a in self.awarded]).reshape(-1, 3)
        self.start_month = self.end_month - np.array([12 * a.contract_years for a in self.awarded], dtype=int)
        self.term = np.zeros(len(self.awarded), dtype=int)  # terms ended so far (extensions and re-tenders)
        self._lines: tuple[np.ndarray, ...] | None = None
        self._draws: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (unit, term) -> draws
        self._state: dict[tuple[int, int], int] = {}  # failure state by (unit, bidder) across a rebuild
        self._fresh: set[int] = set()  # units whose winners start a new term at the rebuild
        self.down = np.zeros(0, dtype=int)  # (L,) months of failure left per winner line

    def expiring(self, month: int) -> np.ndarray:
        """Indices of the units whose term ends at the start of this month of supply."""
        if month <= 0:
            return np.zeros(0, dtype=int)
        return np.flatnonzero(self.active & (self.end_month == month))

    def _monthly(self, a: AwardedUnit) -> tuple[float, float, float]:
        return (self.ratio * a.agreed.sum(), self.ratio * np.nansum(a.award.price * a.agreed),
                self.ratio * np.sum(a.unit.ref_price * a.agreed))

    def extend(self, k: int) -> None:
        """Run unit k for another term at its price."""
        self._new_term(k, self.end_month[k] + 12 * self.awarded[k].contract_years, True)

    def replace(self, k: int, a: AwardedUnit, end_month: int) -> None:
        """Put unit k under a new award (a re-tender) until `end_month`."""
        self.awarded[k] = a
        self.monthly[k] = self._monthly(a)
        self.tender[k] += 1
        self._new_term(k, end_month, a.procured)

    def stop(self, k: int) -> None:
        """End unit k's contract."""
        self._new_term(k, self.end_month[k], False)

    def _new_term(self, k: int, end_month: int, active: bool) -> None:
        """Start unit k's next term. The winner lines are rebuilt when next needed (once for all
        the units whose terms change in a month): other units' winners keep their failure state,
        unit k's winners start supplying with the new term's draws."""
        if self.draw is not None:  # supply dynamics: keep the failure state by (unit, bidder)
            if self._lines is not None:
                unit, bidder = self._lines[:2]
                self._state = dict(zip(zip(unit.tolist(), bidder.tolist()), self.down.tolist()))
                self._fresh = set()
            self._fresh.add(k)
        self.start_month[k], self.end_month[k] = self.end_month[k], end_month
        self.term[k] += 1
        self.active[k] = active
        self._lines = None

    def totals(self) -> tuple[float, float, float, int]:
        """Aggregate monthly (units, spend, spend at reference prices, active units)."""
        m = self.monthly[self.active]
        return float(m[:, 0].sum()), float(m[:, 1].sum()), float(m[:, 2].sum()), int(self.active.sum())

    def lines(self) -> tuple[np.ndarray, ...]:
        """Winner lines of the active units, in unit order: (unit index, bidder, monthly units, price,
        reference price, monthly capacity), each (L,). Cached until a new term changes them.

        Capacity is on the scale of reported demand, as agreed volumes are; purchases run at
        `completion_ratio` x agreed, so a month's capacity is capacity x the same ratio / 12.
        """
        if self._lines is None:
            cols: list[list] = [[np.zeros(0, dtype=int)], [np.zeros(0, dtype=int)]] + [[np.zeros(0)] for _ in range(4)]
            draws: list[tuple[np.ndarray, np.ndarray]] = []  # per line: (uniforms, lengths) over the term
            for k, (a, on) in enumerate(zip(self.awarded, self.active)):
                if not on:
                    continue
                won = np.flatnonzero(a.award.won & (a.agreed > 0))
                for col, values in zip(cols, (np.full(len(won), k), won, self.ratio * a.agreed[won],
                                              a.award.price[won], a.unit.ref_price[won],
                                              self.ratio * a.unit.capacity[won])):
                    col.append(values)
                if self.draw is not None:
                    key = (k, int(self.term[k]))
                    if key not in self._draws:
                        self._draws = {q: v for q, v in self._draws.items() if q[0] != k}  # older terms
                        self._draws[key] = self.draw(*key)
                    u, length = self._draws[key]
                    draws += [(u[:, b], length[:, b]) for b in won]
            self._lines = tuple(np.concatenate(c) for c in cols)
            if self.draw is not None:
                months = max((len(d[0]) for d in draws), default=1)
                self._fail = np.ones((len(draws), months))
                self._length = np.ones((len(draws), months), dtype=int)
                for i, (u, length) in enumerate(draws):
                    self._fail[i, : len(u)] = u
                    self._length[i, : len(u)] = length
                unit, bidder = self._lines[:2]
                self.down = np.array([0 if k in self._fresh else self._state.get((k, b), 0)
                                      for k, b in zip(unit.tolist(), bidder.tolist())], dtype=int)
                self._state, self._fresh = {}, set()
        return self._lines

    def month_draws(self, month: int) -> tuple[np.ndarray, np.ndarray]:
        """(L,) uniforms and failure lengths of each winner line for this month of supply."""
        unit = self.lines()[0]
        idx = np.clip(month - self.start_month[unit], 0, self._fail.shape[1] - 1)
        rows = np.arange(len(unit))
        return self._fail[rows, idx], self._length[rows, idx]


class Simulation:
    """State of one replication; the SimPy processes call its methods."""

    def __init__(self, scenario: Scenario, seed: int, rep: int):
        self.scenario = scenario
        self.seed = seed
        self.rep = rep
        self.record = Replication(rep=rep)
        self.pool: FirmPool = make_firm_pool(scenario.agents, rng_for(seed, rep, "firms"))
        a = scenario.agents
        # adaptive bidders learn from their own awards: their state lives here, in the replication
        self.learner = (learning.HedgeLearner(a.adaptive_grid, a.adaptive_rate, a.adaptive_memory)
                        if a.strategy == "adaptive" else None)
        self.strategy = None if self.learner else make_strategy(a.strategy, **_strategy_params(scenario))
        self.horizon = self.day(scenario.end) + 1.0
        self.prices: dict[str, dict[int, tuple[float, float]]] = {}  # round -> molecule index ->
        # (lowest winning price / reference, cost level)
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
            # capped at the earlier lowest winning price (carried as a fraction of the reference),
            # and the molecule keeps its cost level.
            earlier = self.prices.get(rnd.ceiling_from, {})
            ratios = [earlier[k] for k in sorted(earlier)]
            units = [dataclasses.replace(with_cost_level(u, ratios[u.index][1]),
                                         ceiling=min(u.ceiling, ratios[u.index][0] * u.norm_price))
                     if u.index < len(ratios) else u for u in units]
        if rnd.category == "drug" and self.scenario.market.bidder_count == "bids":
            units = top_up(units, rnd, self.scenario.agents, self.pool,
                           rng_for(self.seed, self.rep, "top-up", rnd.id))
        return units

    def award_round(self, rnd: Round, units: list[Unit]) -> list[AwardedUnit]:
        """Bids, awards by the rulebook, allocation by the optimizer; records every bid and unit."""
        rb = effective_rulebook(self.scenario.rulebook(rnd.rulebook), self.scenario.rules)
        ties = rng_for(self.seed, self.rep, "ties", rnd.id)
        awarded = [self._award_unit(rnd, rb, u, ties) for u in units]
        if rb.kind == "single_winner":
            awarded = self._resolve_pre_awards(rb, awarded)
        self.prices[rnd.id] = {a.unit.index: (float(np.nanmin(a.award.price)) / a.unit.norm_price, a.unit.cost_scale)
                               for a in awarded if a.procured}
        awarded = [self._allocate(rnd, a) for a in awarded]
        day = self.day(rnd.bid_date)
        for a in awarded:
            self._record(rnd, a)
            self.record.tenders.append(self._tender_row(rnd, a, 0, day))
            self._learn(rnd, rb, a)
        return awarded

    def _learn(self, rnd: Round, rb: rules.Rulebook, a: AwardedUnit) -> None:
        """Adaptive bidders see every bid of the unit (bids are opened in public) and update their
        weights with what each margin share would have earned against them."""
        if self.learner is None or not np.isfinite(a.bids).any():
            return
        u = a.unit
        cap = u.ceiling / u.norm_price
        fn = partial(rules.award_fractions, bidders_view(rb), ceiling=cap, demand_share=u.demand_share)
        # originators count the brand margin they give up: their reserve is their cost
        pay = learning.foregone_payoffs(fn, a.bids / u.norm_price, u.reserve / u.norm_price,
                                        u.reserve / u.norm_price, cap, self.learner.theta)
        # one update per firm and award: a firm's products in the unit pool their payoffs
        firms, inv = np.unique(u.firm, return_inverse=True)
        pooled = np.zeros((len(firms), pay.shape[1]))
        np.add.at(pooled, inv, pay)
        self.learner.update(firms, rnd.category, pooled)

    def _tender_row(self, rnd: Round, a: AwardedUnit, tender: int, day: float, exits: int = 0,
                    entrants: int = 0) -> TenderRow:
        u, aw = a.unit, a.award
        vol = a.agreed[aw.won]
        nan = float("nan")
        if a.procured and vol.sum() > 0:
            price = float(np.sum(aw.price[aw.won] * vol) / (u.norm_price * vol.sum()))
            top = float(np.nanmax(aw.price)) / u.norm_price
            hhi, top_share = dynamics.hhi(vol), float(vol.max() / vol.sum())
        else:
            price = top = hhi = top_share = nan
        return TenderRow(self.rep, rnd.id, u.index, u.label, tender, self.date(day).isoformat(), u.n, exits,
                         entrants, aw.n_winners, a.procured, u.ceiling / u.norm_price, price, top, hhi,
                         top_share, a.contract_years)

    def _bids(self, rnd: Round, rb: rules.Rulebook, u: Unit, tender: int = 0) -> np.ndarray:
        scale = u.norm_price
        ceiling = u.ceiling / scale
        if self.learner is not None:
            rng = rng_for(self.seed, self.rep, "learning", f"{u.label}#{tender}")
            pick = self.learner.choose(u.firm, rnd.category, rng)
            reserve = u.reserve / scale
            frac = learning.margin_bids(self.learner.theta, np.minimum(reserve, ceiling), ceiling)
            frac = frac[np.arange(u.n), pick]
            # above the ceiling: no bid where it is a cap, else the reserve itself
            frac = np.where(reserve > ceiling, np.nan if rb.ceiling_is_cap else reserve, frac)
            return frac * scale
        # Bid functions are cached per (bidders, rules, ceiling): bidders plan for a ceiling on a
        # 5% log grid; the award itself uses the exact ceiling.
        # Costs are known relative to the unit's cost level: normalise by it.
        scale = u.norm_price * u.cost_scale
        ceiling = u.ceiling / scale
        ceil_q = float(np.exp(np.round(np.log(ceiling) / 0.05) * 0.05))
        rb_eq = bidders_view(rb)
        ctx = BidContext(
            n_bidders=bidders_bucket(u.n), ceiling=ceil_q,
            award_fn=partial(rules.award_fractions, rb_eq, ceiling=ceil_q),
            award_key=(rb_eq, ceil_q), costs=cost_distribution(self.scenario.agents, rnd.category),
            ceiling_is_cap=rb.ceiling_is_cap,
            focal_fn=partial(rules.focal_fractions, rb_eq, ceiling=ceil_q),
        )
        frac = self.strategy.bids(u.reserve / scale, ctx)
        if rb.ceiling_is_cap:
            frac = np.where(frac > ceiling, np.where(u.reserve / scale <= ceiling, ceiling, np.nan), frac)
        return frac * scale

    def _award_unit(self, rnd: Round, rb: rules.Rulebook, u: Unit, ties: np.random.Generator,
                    tender: int = 0) -> AwardedUnit:
        if u.n == 0:
            empty = rules.Award(won=np.zeros(0, bool), price=np.zeros(0), agreed=np.zeros(0), n_valid=0,
                                n_winners=0, reason="no bidders")
            return AwardedUnit(u, empty, np.zeros(0), False, "no bidders", 1, np.zeros(0))
        bids = self._bids(rnd, rb, u, tender)
        # Ties in price are broken at random (the rules rank equal prices by input order).
        order = ties.permutation(u.n)
        inv = np.argsort(order)
        share = None if u.demand_share is None else u.demand_share[order]
        # the planner chooses among two or more valid bids of a multi-winner drug round; a lone bid
        # and the pilot go through the rulebook, whose pre-award negotiation also sets prices
        if (self.scenario.optimizer.mode == "planner" and rnd.category == "drug" and rb.kind == "multi_winner"
                and int((np.isfinite(bids) & (bids <= u.ceiling)).sum()) >= 2):
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
        n_valid = int(valid.sum())
        # the agreed volume is the rulebook's (so the designs buy comparable volumes); the number of
        # winners is the planner's to choose, within its supply-security constraints, which relax
        # where the valid bids cannot meet them (one bidder cannot be held to a share below 1)
        share = rules.volume_share_for(rb, rules.max_winners_for(rb, n_valid))
        demand = u.province_demand * share
        problem = wdp.PlannerProblem(
            bid=np.where(valid, bids, 0.0), eligible=valid, demand=demand,
            capacity=u.capacity, logistics=self._logistics(u, np.arange(u.n)), max_winners=n_valid,
            min_suppliers=min(opt.min_suppliers, n_valid), label=f"round {rnd.id}, molecule {u.label}",
            max_share=max(opt.max_share, 1.0 / n_valid),
            backup=opt.backup_coverage and wdp.backup_coverable(u.capacity[valid], float(demand.sum())))
        try:
            won, alloc = wdp.plan(problem, time_limit=opt.time_limit)
        except wdp.AllocationError as exc:
            raise SimulationError(str(exc)) from None
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
        # cuts and the official-style annual savings are measured against the round's published base
        base = u.ref_price[won] if rnd.cut_base == "reference" else np.full(int(won.sum()), u.ceiling)
        cuts = 1.0 - aw.price[won] / base
        savings = float(np.sum((base - aw.price[won]) * a.agreed[won]))
        self.record.units.append(UnitRow(
            self.rep, rnd.id, u.index, u.label, u.n, aw.n_valid, aw.n_winners, a.procured, a.status,
            float(cuts.mean()) if a.procured else float("nan"),
            float(cuts.max()) if a.procured else float("nan"),
            float(a.agreed.sum()), float(np.sum(u.ref_price * a.agreed)), savings, a.contract_years,
            method, objective))

    # -- contracts ---------------------------------------------------------------------------------
    def contract_book(self, rnd: Round, awarded: list[AwardedUnit]) -> ContractBook:
        """The round's procured units under contract; winners buy `completion_ratio` x agreed / 12 a month."""
        done = [a for a in awarded if a.procured]
        book = ContractBook(done, np.array([12 * a.contract_years for a in done], dtype=int),
                            np.ones(len(done), dtype=bool), np.zeros(len(done), dtype=int),
                            self.scenario.market.completion_ratio / 12.0)
        if self.scenario.dynamics.supply:
            book.draw = partial(self._supply_draws, book)
        return book

    def _supply_draws(self, book: ContractBook, k: int, term: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit k's failure draws for one term: uniforms and geometric lengths, (months, bidders),
        from `supply` streams keyed by the unit and the term, so a given bidder's month-m draws do
        not depend on who else won or on the term's length."""
        a = book.awarded[k]
        key = f"{a.unit.label}#{term}"
        shape = (12 * a.contract_years, a.unit.n)  # row-major: a longer term only appends months
        uniform = rng_for(self.seed, self.rep, "supply", key).random(shape)
        length = rng_for(self.seed, self.rep, "supply", key + "/length").geometric(
            1.0 / self.scenario.dynamics.failure_months, size=shape)
        return uniform, length

    def expire(self, rnd: Round, book: ContractBook, month: int, day: float) -> None:
        """Contracts whose term ends this month: extended at their price, stopped, or re-tendered."""
        ending = book.expiring(month)
        if not len(ending):
            return
        policy = self.scenario.market.renewal
        if policy == "extend":
            for k in ending:
                book.extend(k)
            self.log(day, "renewal", rnd.id, f"{len(ending)} unit(s) extended at their price")
        elif policy == "none":
            for k in ending:
                book.stop(k)
            self.log(day, "expiry", rnd.id, f"{len(ending)} unit(s) reached the end of their term")
        else:
            for k in ending:
                new = self.retender(rnd, book.awarded[k], int(book.tender[k]) + 1, day)
                book.replace(k, new, month + 12 * new.contract_years)
            self.log(day, "retender", rnd.id, f"{len(ending)} unit(s) re-tendered")

    def retender(self, rnd: Round, prev: AwardedUnit, tender: int, day: float) -> AwardedUnit:
        """Re-tender a unit at expiry among the firms still in its market and the new entrants.

        Stay or exit: each earlier bidder compares its expected annual profit under the expiring
        award (winners: contract margin x purchases; losers: what they sell outside the agreed
        volume) with its outside option. Entrants: approvals arrive at `entry_rate` per year.
        The ceiling is the expiring award's highest winning price (or the first ceiling).
        """
        d, u = self.scenario.dynamics, prev.unit
        rng = rng_for(self.seed, self.rep, "dynamics", f"{u.label}#{tender}")
        won = prev.award.won
        top = float(np.nanmax(prev.award.price)) if prev.procured else u.ceiling
        contract = (np.nan_to_num(prev.award.price) - u.cost) * prev.agreed * self.scenario.market.completion_ratio
        outside = dynamics.loser_profit(u.cost, u.ref_price, top, u.demand, int((~won).sum()), d.loser_access,
                                        d.loser_price_cap)
        stay = dynamics.stays(np.where(won, contract, outside), u.norm_price * u.demand / max(u.n, 1),
                              d.outside_option)
        left = np.union1d(prev.left, u.firm[~stay])  # firms that left do not come back as entrants
        new = entrants(u, int(rng.poisson(d.entry_rate * prev.contract_years)), self.pool, self.scenario.agents,
                       rnd.category, rng, exclude=left)
        share = None
        if u.demand_share is not None:
            kept = u.demand_share[stay]
            fill = kept.mean() if len(kept) else 1.0
            share = np.concatenate([kept, np.full(new.n, fill)])
            share = share / share.sum() if share.sum() > 0 else share
        ceiling = min(top, u.ceiling) if d.renewal_ceiling == "max_winning" else u.ceiling
        unit = dataclasses.replace(
            u, ceiling=float(ceiling), firm=np.concatenate([u.firm[stay], new.firm]),
            originator=np.concatenate([u.originator[stay], new.originator]),
            cost=np.concatenate([u.cost[stay], new.cost]), reserve=np.concatenate([u.reserve[stay], new.reserve]),
            ref_price=np.concatenate([u.ref_price[stay], new.ref_price]),
            capacity=np.concatenate([u.capacity[stay], new.capacity]), demand_share=share)
        # at a re-tender only bids at or below the maximum valid price can win [A20, A21]
        rb = dataclasses.replace(effective_rulebook(self.scenario.rulebook(rnd.rulebook), self.scenario.rules),
                                 ceiling_is_cap=True)
        a = self._award_unit(rnd, rb, unit, rng, tender)
        a = self._allocate(rnd, dataclasses.replace(a, contract_years=d.renewal_years, left=left))
        self._learn(rnd, rb, a)
        self.record.tenders.append(self._tender_row(rnd, a, tender, day, int((~stay).sum()), new.n))
        return a

    def deliver(self, rnd: Round, book: ContractBook, month: int, day: float) -> None:
        """One month of purchases; with supply dynamics, winner by winner with failures and backups."""
        d = self.scenario.dynamics
        date = self.date(day).isoformat()
        if book.draw is None:
            units, spend, ref, n = book.totals()
            self.record.deliveries.append(DeliveryRow(self.rep, rnd.id, date, units, spend, ref, ref - spend, n))
            return
        unit_of, _, volume, price, ref_price, capacity = book.lines()  # sets book.down on a rebuild
        days = self.next_month_day(day) - day
        uniform, length = book.month_draws(month)
        sm = dynamics.supply_month(unit_of, volume, capacity, book.down, len(book.awarded), uniform, length,
                                   fail_prob=d.failure_prob, lag_share=min(1.0, d.backup_lag_days / days),
                                   capacity_binds=d.capacity_binds)
        book.down = sm.down
        delivered = sm.own + sm.backup
        spend = float(np.sum(price * sm.own) + np.sum(price * (1.0 + d.backup_premium) * sm.backup))
        ref = float(np.sum(ref_price * delivered))
        with np.errstate(invalid="ignore", divide="ignore"):
            short_days = float(np.sum(np.where(sm.need > 0, days * sm.shortage / sm.need, 0.0)))
        self.record.deliveries.append(DeliveryRow(
            self.rep, rnd.id, date, float(delivered.sum()), spend, ref, ref - spend, int(book.active.sum()),
            float(sm.backup.sum()), float(sm.shortage.sum()), short_days, sm.new_failures))


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

