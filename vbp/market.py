"""Markets: turning a round's published facts into molecules (or device units) and their bidders.

Per-molecule data is not public for most rounds, so each replication generates the molecules of a
round from round-level facts by this documented, seeded procedure (docs/model.md, Initialisation):

1. products P: `bidding_products`, else `bidding_firms x products_per_firm`; firms F likewise.
2. bidders per molecule n_m = k + Multinomial(P - kM, Dirichlet(bidders_dispersion)), k the round's
   `min_bidders` (1 unless an entry threshold is published): every listed molecule has at least k
   bidders and the total equals P (raised to kM if smaller).
3. firms drawn from the national pool by size, distinct within a molecule, unused firms favoured so
   that about F distinct firms bid; one bidder per molecule is the originator with probability
   `originator_bid_prob`.
4. molecule market values: the round's value split by lognormal weights (`molecule_value_sigma`);
   reference prices per unit lognormal; demand = value / reference price, spread over the
   participating provinces by population.
5. unit costs from the category's cost distribution (fractions of the reference price); originators
   also forgo a brand margin (`originator_premium`), which raises the lowest price they accept.
6. with `market.bidder_count = "bids"` only (the simulation calls `top_up` once any ceiling from an
   earlier round is set): entrants are added until as many products can bid as the round counts.

Device rounds use their own structure: stents are one group of products with brand-level demand;
joints are category x group A/B units (group A = the firms inside the top 85% of cumulative
intended volume, topped up to 7); insulin varieties are groups with brand-level demand. The
published outcomes are never used here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from vbp.data import provinces
from vbp.scenario import AgentParams, MarketParams, Round
from vbp.strategies import CostDistribution

__all__ = ["Unit", "FirmPool", "Entrants", "make_firm_pool", "generate_units", "cost_distribution", "entrants",
           "top_up", "can_bid",
           "with_cost_level", "firm_costs", "cost_level_z",
           "JOINT_INTENDED_SHARE"]

# Joint intended volumes are 90% of hospitals' reported demand [A3,A4] (H); units hold the
# reported demand, to which the rank-volume table applies.
JOINT_INTENDED_SHARE = 0.9


@dataclass(frozen=True)
class FirmPool:
    """The manufacturers of one replication: home province and size (sales weight)."""

    home: np.ndarray  # (F,) province index
    size: np.ndarray  # (F,) relative size, sums to 1
    efficiency: np.ndarray  # (F,) standard-normal cost effect common to a firm's products


@dataclass(frozen=True)
class Unit:
    """One molecule (drugs) or competition unit (devices) with its bidders."""

    round_id: str
    index: int
    label: str
    norm_price: float  # yuan per unit that costs and bids are expressed against (reference price)
    ref_price: np.ndarray  # (n,) yuan per unit, pre-VBP price of each bidder's product
    demand: float  # reported annual demand of the participating regions, units
    ceiling: float  # yuan per unit
    firm: np.ndarray  # (n,) firm ids
    originator: np.ndarray  # (n,) bool
    cost: np.ndarray  # (n,) yuan per unit
    reserve: np.ndarray  # (n,) lowest acceptable price, yuan per unit (cost + forgone brand margin)
    capacity: np.ndarray  # (n,) units per year
    demand_share: np.ndarray | None  # (n,) brand-level share of demand (devices, insulin)
    province_idx: np.ndarray  # (P,) participating provinces
    province_demand: np.ndarray  # (P,) units per year
    cost_scale: float = 1.0  # the unit's cost level: its bidders' costs are drawn from the category's
    # distribution times this (known to them), as a fraction of the reference price

    @property
    def n(self) -> int:
        return len(self.firm)


def make_firm_pool(agents: AgentParams, rng: np.random.Generator) -> FirmPool:
    """Draw the national pool: homes by population, sizes Pareto-like (a few large groups)."""
    prov = provinces()
    home = rng.choice(len(prov.name), size=agents.firm_pool, p=prov.weights())
    size = rng.pareto(1.5, size=agents.firm_pool) + 1.0
    return FirmPool(home=home, size=size / size.sum(), efficiency=rng.standard_normal(agents.firm_pool))


def cost_level_z(u: np.ndarray) -> np.ndarray:
    """A molecule's standardised log cost level at uniforms u: the three-point Gauss-Hermite
    approximation of a standard normal (-sqrt 3, 0, +sqrt 3 with probabilities 1/6, 2/3, 1/6).
    Three levels rather than a continuum, because bidders solve their bid functions for the level
    they face: a continuum would need a new equilibrium for nearly every molecule."""
    return np.where(u < 1 / 6, -np.sqrt(3.0), np.where(u >= 5 / 6, np.sqrt(3.0), 0.0))


def firm_costs(dist: CostDistribution, u: np.ndarray, firm: np.ndarray, pool: FirmPool, share: float) -> np.ndarray:
    """Costs at uniforms `u` with `share` of their log-variance common to each firm (a Gaussian
    copula, so every product's cost keeps the category's distribution; share 0 is plain inversion)."""
    if share <= 0.0:
        return dist.ppf(u)
    z = np.sqrt(share) * pool.efficiency[firm] + np.sqrt(1.0 - share) * ndtri(np.clip(u, 1e-12, 1 - 1e-12))
    return dist.ppf(ndtr(z))


def cost_distribution(agents: AgentParams, category: str, scale: float = 1.0) -> CostDistribution:
    """The category's unit-cost distribution, as a fraction of the reference price times `scale`."""
    median = getattr(agents, f"cost_median_{category}") * scale
    sigma = getattr(agents, f"cost_sigma_{category}")
    return CostDistribution(median=median, sigma=sigma, upper=1.5 * scale)


def _counts(total: int, groups: int, dispersion: float, rng: np.random.Generator, floor: int = 1) -> np.ndarray:
    """Split `total` items into `groups` counts, each >= `floor`, unevenly (gamma weights) above it."""
    total = max(total, floor * groups)
    w = rng.gamma(dispersion, size=groups)
    return floor + rng.multinomial(total - floor * groups, w / w.sum())


def _pick_firms(pool: FirmPool, n_firms: int, counts: np.ndarray, distinct: bool,
                rng: np.random.Generator) -> list[np.ndarray]:
    """Choose the round's firms, then each group's bidders among them (favouring unused firms)."""
    n_firms = min(n_firms, len(pool.size))
    firms = rng.choice(len(pool.size), size=n_firms, replace=False, p=pool.size)
    weight = pool.size[firms]
    used = np.zeros(n_firms, dtype=bool)
    out = []
    for n in counts:
        w = weight * np.where(used, 1.0, 20.0)
        k = min(int(n), n_firms) if distinct else int(n)
        pick = rng.choice(n_firms, size=k, replace=not distinct, p=w / w.sum())
        used[pick] = True
        out.append(firms[pick])
    return out


def _products_and_firms(rnd: Round, agents: AgentParams) -> tuple[int, int]:
    ppf = agents.products_per_firm
    if rnd.bidding_products is not None:
        products = rnd.bidding_products
        firms = rnd.bidding_firms or max(1, round(products / ppf))
    elif rnd.bidding_firms is not None:
        firms = rnd.bidding_firms
        products = max(rnd.molecules, round(firms * ppf))
    else:
        products, firms = 3 * rnd.molecules, max(1, round(3 * rnd.molecules / ppf))
    floor = rnd.min_bidders  # an entry threshold: that many products, of distinct firms, per molecule
    return max(products, floor * rnd.molecules), max(firms, floor)


def _province_split(rnd: Round, demand: float) -> tuple[np.ndarray, np.ndarray]:
    prov = provinces()
    idx = prov.index(rnd.provinces)
    return idx, demand * prov.weights(rnd.provinces)


def _capacity(agents: AgentParams, demand: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return demand * rng.uniform(agents.capacity_low, agents.capacity_high, size=n)


def generate_units(rnd: Round, agents: AgentParams, market: MarketParams, pool: FirmPool,
                   rng: np.random.Generator) -> list[Unit]:
    """All molecules / competition units of one round, with bidders, costs and demand."""
    if rnd.category == "drug":
        return _drug_units(rnd, agents, market, pool, rng)
    if rnd.category == "insulin":
        return _insulin_units(rnd, agents, market, pool, rng)
    if rnd.category == "stent":
        return _stent_units(rnd, agents, market, pool, rng)
    return _joint_units(rnd, agents, market, pool, rng)


def _drug_units(rnd, agents, market, pool, rng) -> list[Unit]:
    products, n_firms = _products_and_firms(rnd, agents)
    counts = _counts(products, rnd.molecules, market.bidders_dispersion, rng, rnd.min_bidders)
    firm_lists = _pick_firms(pool, n_firms, counts, True, rng)
    w = rng.lognormal(0.0, market.molecule_value_sigma, size=rnd.molecules)
    values = rnd.market_value_bn * 1e9 * w / w.sum()
    ref = market.ref_price_median_yuan * rng.lognormal(0.0, market.ref_price_sigma, size=rnd.molecules)
    dist = cost_distribution(agents, "drug")
    units = []
    for m in range(rnd.molecules):
        firm = firm_lists[m]
        n = len(firm)
        orig = np.zeros(n, dtype=bool)
        if rng.random() < agents.originator_bid_prob:
            orig[0] = True
        cost = firm_costs(dist, rng.random(n), firm, pool, agents.cost_firm_share_drug) * ref[m]
        reserve = cost + orig * agents.originator_premium * ref[m]
        demand = values[m] / ref[m]
        idx, pdem = _province_split(rnd, demand)
        units.append(Unit(
            round_id=rnd.id, index=m, label=f"{rnd.id}/m{m + 1:02d}", norm_price=float(ref[m]),
            ref_price=np.full(n, ref[m]), demand=float(demand), ceiling=float(market.ceiling(rnd) * ref[m]),
            firm=firm, originator=orig, cost=cost, reserve=reserve,
            capacity=_capacity(agents, demand, n, rng), demand_share=None,
            province_idx=idx, province_demand=pdem,
        ))
    # Molecule cost levels, drawn last so that the draws above do not depend on cost_tau_drug.
    level = np.exp(agents.cost_tau_drug * cost_level_z(rng.random(rnd.molecules)))
    return [with_cost_level(u, float(s)) for u, s in zip(units, level)]


TOP_UP_LIMIT = 3  # at most this many times the round's products are added as entrants


def can_bid(u: Unit) -> np.ndarray:
    """Which of a drug unit's products can bid: its ceiling is a cap, so a reserve above it cannot."""
    return u.reserve <= u.ceiling


def top_up(units: list[Unit], rnd: Round, agents: AgentParams, pool: FirmPool,
           rng: np.random.Generator) -> list[Unit]:
    """A drug round's units with entrants added until as many products can bid as the round's
    bidding products (published counts are of bids, while some generated entrants are priced out
    by the ceiling), or until TOP_UP_LIMIT x that many have been added.

    An entrant joins a molecule in proportion to its entrants so far, from the round's firms not
    already in it, favouring firms with no product that can bid yet; its cost is drawn as the
    others' at the molecule's cost level, and it lists at the reference price. Units are only
    appended to, so the first bidders are those of `generate_units`."""
    products = _products_and_firms(rnd, agents)[0]
    firms = np.unique(np.concatenate([u.firm for u in units]))
    dist = cost_distribution(agents, "drug")
    units = list(units)
    added = 0
    while added < TOP_UP_LIMIT * products:
        deficit = products - sum(int(can_bid(u).sum()) for u in units)
        if deficit <= 0:
            break
        bidding = np.zeros(len(pool.size), dtype=bool)
        for u in units:
            bidding[u.firm[can_bid(u)]] = True
        p = np.array([u.n if u.n < len(firms) else 0 for u in units], dtype=float)
        if p.sum() <= 0:
            break
        where = rng.multinomial(min(deficit, TOP_UP_LIMIT * products - added), p / p.sum())
        for m in np.flatnonzero(where):
            u = units[m]
            free = np.setdiff1d(firms, u.firm)
            k = min(int(where[m]), len(free))
            w = pool.size[free] * np.where(bidding[free], 1.0, 20.0)
            firm = rng.choice(free, size=k, replace=False, p=w / w.sum())
            cost = firm_costs(dist, rng.random(k), firm, pool, agents.cost_firm_share_drug)
            cost = cost * u.norm_price * u.cost_scale
            units[m] = dataclasses.replace(
                u, ref_price=np.concatenate([u.ref_price, np.full(k, u.norm_price)]),
                firm=np.concatenate([u.firm, firm]), originator=np.concatenate([u.originator, np.zeros(k, bool)]),
                cost=np.concatenate([u.cost, cost]), reserve=np.concatenate([u.reserve, cost]),
                capacity=np.concatenate([u.capacity, _capacity(agents, u.demand, k, rng)]))
            added += k
    return units


def with_cost_level(u: Unit, level: float) -> Unit:
    """Unit u with its bidders' costs moved to cost level `level` (reserves keep any brand margin)."""
    ratio = level / u.cost_scale
    cost = u.cost * ratio
    return dataclasses.replace(u, cost=cost, reserve=u.reserve + (cost - u.cost), cost_scale=level)


@dataclass(frozen=True)
class Entrants:
    """Newly approved generic products entering a unit's market before a re-tender."""

    firm: np.ndarray  # (k,) firm ids from the pool, none already in the market
    cost: np.ndarray  # (k,) yuan per unit
    capacity: np.ndarray  # (k,) units per year
    ref_price: np.ndarray  # (k,) list price, yuan per unit: the unit's reference price

    @property
    def n(self) -> int:
        return len(self.firm)

    @property
    def originator(self) -> np.ndarray:
        return np.zeros(self.n, dtype=bool)

    @property
    def reserve(self) -> np.ndarray:
        return self.cost


def entrants(u: Unit, k: int, pool: FirmPool, agents: AgentParams, category: str,
             rng: np.random.Generator, exclude: np.ndarray | None = None) -> Entrants:
    """k entrants into unit u: pool firms not in it and not in `exclude` (by size), costs from the
    category's distribution, capacity drawn as for the first bidders; they list at the unit's
    reference price."""
    barred = u.firm if exclude is None else np.union1d(u.firm, exclude)
    candidates = np.setdiff1d(np.arange(len(pool.size)), barred)
    k = min(k, len(candidates))
    p = pool.size[candidates] / pool.size[candidates].sum() if k else None
    firm = rng.choice(candidates, size=k, replace=False, p=p) if k else np.zeros(0, dtype=int)
    share = agents.cost_firm_share_drug if category == "drug" else 0.0
    cost = firm_costs(cost_distribution(agents, category), rng.random(k), firm, pool, share) * u.norm_price \
        * u.cost_scale
    return Entrants(firm=firm, cost=cost, capacity=_capacity(agents, u.demand, k, rng),
                    ref_price=np.full(k, u.norm_price))


def _brand_shares(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, size=n)
    return w / w.sum()


def _insulin_units(rnd, agents, market, pool, rng) -> list[Unit]:
    products, n_firms = _products_and_firms(rnd, agents)
    counts = _counts(products, rnd.molecules, market.bidders_dispersion, rng)
    firm_lists = _pick_firms(pool, n_firms, counts, False, rng)
    w = rng.lognormal(0.0, market.molecule_value_sigma, size=rnd.molecules)
    values = rnd.market_value_bn * 1e9 * w / w.sum()
    # about 81 yuan per dose on average (17 bn / 210 m doses) [S27]
    ref = 81.0 * rng.lognormal(0.0, 0.3, size=rnd.molecules)
    dist = cost_distribution(agents, "insulin")
    units = []
    for m in range(rnd.molecules):
        firm = firm_lists[m]
        n = len(firm)
        demand = values[m] / ref[m]
        idx, pdem = _province_split(rnd, demand)
        cost = dist.sample(rng, n) * ref[m]
        units.append(Unit(
            round_id=rnd.id, index=m, label=f"{rnd.id}/g{m + 1:02d}", norm_price=float(ref[m]),
            ref_price=np.full(n, ref[m]), demand=float(demand), ceiling=float(market.ceiling(rnd) * ref[m]),
            firm=firm, originator=np.zeros(n, dtype=bool), cost=cost, reserve=cost.copy(),
            capacity=_capacity(agents, demand, n, rng), demand_share=_brand_shares(n, 1.0, rng),
            province_idx=idx, province_demand=pdem,
        ))
    return units


def _stent_units(rnd, agents, market, pool, rng) -> list[Unit]:
    products, n_firms = _products_and_firms(rnd, agents)
    firms = _pick_firms(pool, n_firms, np.array([n_firms]), True, rng)[0]
    extra = rng.choice(n_firms, size=max(0, products - n_firms), replace=True)
    firm = np.concatenate([firms, firms[extra]])
    n = len(firm)
    ref_yuan = rnd.reference_price_yuan or 1.0
    demand = rnd.volume_units or rnd.market_value_bn * 1e9 / ref_yuan
    idx, pdem = _province_split(rnd, demand)
    cost = cost_distribution(agents, "stent").sample(rng, n) * ref_yuan
    return [Unit(
        round_id=rnd.id, index=0, label=f"{rnd.id}/all", norm_price=float(ref_yuan),
        ref_price=ref_yuan * rng.lognormal(0.0, market.product_price_sigma, size=n), demand=float(demand),
        ceiling=float(market.ceiling(rnd) * ref_yuan), firm=firm, originator=np.zeros(n, dtype=bool),
        cost=cost, reserve=cost.copy(), capacity=_capacity(agents, demand, n, rng),
        demand_share=_brand_shares(n, 1.0, rng), province_idx=idx, province_demand=pdem,
    )]


def _joint_units(rnd, agents, market, pool, rng) -> list[Unit]:
    n_firms = rnd.bidding_firms or 48
    firms = _pick_firms(pool, n_firms, np.array([n_firms]), True, rng)[0]
    dist = cost_distribution(agents, "joint")
    units = []
    for group in rnd.groups:
        cat, ref_yuan = group.name, group.reference_price_yuan
        volume = group.volume_units / JOINT_INTENDED_SHARE
        member = firms[rng.random(n_firms) < market.joint_participation]
        if len(member) == 0:
            member = firms[:1]
        shares = _brand_shares(len(member), 1.5, rng)
        order = np.argsort(-shares, kind="stable")
        cum = np.cumsum(shares[order])
        in_a = np.zeros(len(member), dtype=bool)
        in_a[order[cum - shares[order] < 0.85]] = True  # inside the top 85% of cumulative volume
        if in_a.sum() < 7:
            in_a[order[:7]] = True
        for g, mask in (("A", in_a), ("B", ~in_a)):
            if not mask.any():
                continue
            n = int(mask.sum())
            demand = volume * shares[mask].sum()
            idx, pdem = _province_split(rnd, demand)
            cost = dist.sample(rng, n) * ref_yuan
            units.append(Unit(
                round_id=rnd.id, index=len(units), label=f"{rnd.id}/{cat}/{g}", norm_price=ref_yuan,
                ref_price=ref_yuan * rng.lognormal(0.0, market.product_price_sigma, size=n),
                demand=float(demand), ceiling=float(market.ceiling(rnd) * ref_yuan), firm=member[mask],
                originator=np.zeros(n, dtype=bool), cost=cost, reserve=cost.copy(),
                capacity=_capacity(agents, demand, n, rng),
                demand_share=shares[mask] / shares[mask].sum(), province_idx=idx, province_demand=pdem,
            ))
    return units
