"""How manufacturers bid: cost-plus and an approximate Bayes-Nash equilibrium bid function.

All prices and costs are fractions of the unit's reference price. A bid of ``nan`` means the
firm does not bid (its cost is above a capped ceiling).
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import os
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import qmc

__all__ = [
    "CostModel",
    "CostDistribution",
    "UniformCost",
    "BidContext",
    "Strategy",
    "CostPlus",
    "BidFunction",
    "Equilibrium",
    "STRATEGIES",
    "make_strategy",
    "clear_cache",
    "cache_dir",
]


def _check_positive(owner: str, name: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a finite number > 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


# --------------------------------------------------------------------------- cost models


@runtime_checkable
class CostModel(Protocol):
    """What a strategy needs of a cost distribution (hashable; support within [0, upper])."""

    @property
    def upper(self) -> float: ...
    def ppf(self, u: np.ndarray) -> np.ndarray: ...
    def cdf(self, x: np.ndarray) -> np.ndarray: ...
    def sample(self, rng: np.random.Generator, size) -> np.ndarray: ...


@dataclass(frozen=True)
class CostDistribution:
    """Unit cost as a fraction of the reference price: lognormal(median, sigma) truncated at
    `upper` (conditioned on cost <= upper, the same as redrawing costs above it)."""

    median: float  # fraction of the reference price, > 0
    sigma: float  # log-scale spread, > 0
    upper: float = 1.5  # largest possible cost (fraction of the reference price)

    def __post_init__(self) -> None:
        for name in ("median", "sigma", "upper"):
            _check_positive("CostDistribution", name, getattr(self, name))
        if self._mass_below_upper() < 1e-12:
            raise ValueError(
                f"CostDistribution.upper={self.upper!r} leaves no probability mass "
                f"for median={self.median!r}, sigma={self.sigma!r}"
            )

    def _mass_below_upper(self) -> float:
        """Untruncated lognormal probability of a cost <= upper."""
        return float(ndtr((math.log(self.upper) - math.log(self.median)) / self.sigma))

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(cost <= x) under the truncated distribution."""
        x = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(np.maximum(x, 0.0)) - math.log(self.median)) / self.sigma
        return np.clip(ndtr(z) / self._mass_below_upper(), 0.0, 1.0)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        """Cost at quantile ``u`` in [0, 1] (0 -> 0, 1 -> upper)."""
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        c = self.median * np.exp(self.sigma * ndtri(u * self._mass_below_upper()))
        return np.minimum(c, self.upper)

    def sample(self, rng: np.random.Generator, size) -> np.ndarray:
        """Draw costs by inversion (common random numbers across parameter changes)."""
        return self.ppf(rng.random(size))


@dataclass(frozen=True)
class UniformCost:
    """Unit cost uniform on [low, high] (fractions of the reference price); the textbook case."""

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and 0 <= self.low < self.high):
            raise ValueError(
                f"UniformCost needs 0 <= low < high, got low={self.low!r}, high={self.high!r}"
            )

    @property
    def upper(self) -> float:
        """Largest possible cost."""
        return self.high

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """P(cost <= x)."""
        x = np.asarray(x, dtype=float)
        return np.clip((x - self.low) / (self.high - self.low), 0.0, 1.0)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        """Cost at quantile ``u`` in [0, 1]."""
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        return self.low + u * (self.high - self.low)

    def sample(self, rng: np.random.Generator, size) -> np.ndarray:
        """Draw costs by inversion."""
        return self.ppf(rng.random(size))


# --------------------------------------------------------------------------- interface

AwardFn = Callable[[np.ndarray], np.ndarray]
FocalFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BidContext:
    """What a bidder knows when it bids in one competition unit."""

    n_bidders: int  # firms in the unit, including any whose cost turns out above a capped ceiling
    ceiling: float  # fraction of the reference price; bids above it are invalid if ceiling_is_cap
    award_fn: AwardFn | None  # bids (S, n) -> agreed volume fractions (S, n); nan bid = no bid
    award_key: Hashable  # identifies award_fn (e.g. (rulebook, ceiling)); the cache key for it
    costs: CostModel  # distribution the bidder believes rivals' costs are drawn from
    ceiling_is_cap: bool = True
    # optional fast path: (nodes (m,), rival bids (S, n-1)) -> (m, S) agreed fraction of a bid at
    # each node; it must equal award_fn's column 0 on the stacked profiles, bit for bit, since
    # the bid-function cache does not tell the two apart (rules.focal_fractions)
    focal_fn: FocalFn | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.n_bidders, int | np.integer) and self.n_bidders >= 1):
            raise ValueError(f"BidContext.n_bidders must be an int >= 1, got {self.n_bidders!r}")
        _check_positive("BidContext", "ceiling", self.ceiling)
        if not isinstance(self.costs, CostModel):
            raise ValueError(f"BidContext.costs needs upper/ppf/cdf/sample, got {self.costs!r}")
        try:
            hash(self.award_key)
            hash(self.costs)
        except TypeError as exc:
            raise ValueError(f"BidContext.award_key and .costs must be hashable: {exc}") from None

    @property
    def bid_cap(self) -> float:
        """Highest bid considered: the ceiling if it is a cap, else max(ceiling, top cost)."""
        if self.ceiling_is_cap:
            return float(self.ceiling)
        return max(float(self.ceiling), float(self.costs.upper))


class Strategy(Protocol):
    """Maps costs (n,) to bids (n,), both fractions of the reference price; nan = does not bid."""

    name: str

    def bids(self, costs: np.ndarray, ctx: BidContext) -> np.ndarray: ...


def _as_costs(costs: np.ndarray) -> np.ndarray:
    """Validate a cost vector (nan allowed = no firm); negative costs are an error."""
    costs = np.asarray(costs, dtype=float)
    if np.any(costs < 0):
        raise ValueError(f"costs must be >= 0, got min {np.nanmin(costs)!r}")
    return costs


def _admissible(raw: np.ndarray, costs: np.ndarray, ctx: BidContext) -> np.ndarray:
    """Clamp raw bids to at most the bid cap and at least the cost; nan where the cost is above a
    capped ceiling (or missing)."""
    out = np.maximum(np.minimum(raw, ctx.bid_cap), costs)
    if ctx.ceiling_is_cap:
        out = np.where(costs > ctx.ceiling, np.nan, out)
    return np.where(np.isnan(costs), np.nan, out)


@dataclass(frozen=True)
class CostPlus:
    """Bid cost times (1 + markup), capped at the ceiling."""

    markup: float = 0.1  # relative markup over unit cost, >= 0
    name: ClassVar[str] = "cost_plus"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.markup) and self.markup >= 0):
            raise ValueError(f"CostPlus.markup must be a finite number >= 0, got {self.markup!r}")

    def bids(self, costs: np.ndarray, ctx: BidContext) -> np.ndarray:
        """bid = min(ceiling, cost * (1 + markup)); nan if cost > ceiling (cap)."""
        costs = _as_costs(costs)
        return _admissible(costs * (1.0 + self.markup), costs, ctx)


# --------------------------------------------------------------------------- equilibrium


@dataclass(frozen=True)
class BidFunction:
    """A symmetric bid function on a cost grid (read-only arrays, fractions of reference price)."""

    costs: np.ndarray  # cost grid, increasing
    bids: np.ndarray  # bid at each grid cost, non-decreasing, in [cost, bid cap]
    iterations: int  # iterations run
    max_change: float  # largest bid change in the last iteration
    converged: bool  # max_change fell below the tolerance (else bids average the last half)

    def __call__(self, costs: np.ndarray) -> np.ndarray:
        """Bids for arbitrary costs by linear (hence monotone) interpolation."""
        return np.interp(costs, self.costs, self.bids)


_CACHE: OrderedDict[Hashable, BidFunction] = OrderedDict()
_CACHE_SIZE = 512
_Z = 3.0  # standard errors a deviation's gain must clear
_LOCAL = 0.5  # deviations moving the markup by less than this share are left to the envelope
_MIN_HITS = 16  # rival samples below which an on-path volume is extrapolated
_EPS = 1e-7  # relative offset of the points just either side of 0.5*ceiling and the ceiling


def clear_cache() -> None:
    """Forget every cached equilibrium bid function."""
    _CACHE.clear()


def _cost_grid(ctx: BidContext, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(costs, survival): `grid` quantiles (ends included) of the cost distribution truncated at
    the bid cap, and P(rival cost > c) at each."""
    levels = np.linspace(0.0, 1.0, grid) * float(ctx.costs.cdf(np.array([ctx.bid_cap]))[0])
    c = np.maximum.accumulate(np.minimum(ctx.costs.ppf(levels), ctx.bid_cap))
    return c, 1.0 - levels


def _rival_costs(ctx: BidContext, samples: int, seed: int) -> np.ndarray:
    """(samples, n-1) rival costs from scrambled Sobol' points (low-discrepancy, seeded)."""
    k = ctx.n_bidders - 1
    if k == 0:
        return np.empty((samples, 0))
    sobol = qmc.Sobol(k, scramble=True, seed=np.random.default_rng(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # balance is best for powers of two
        u = sobol.random(samples)
    return ctx.costs.ppf(u)


def _nodes(
    bids: np.ndarray, lo: float, ctx: BidContext, fill: int
) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, on): bids whose volume is evaluated - the current bids, `fill` evenly spaced bids,
    0.5*ceiling and the ceiling with points just either side - and the node of each current bid."""
    hi = ctx.bid_cap
    special = np.array([0.5 * ctx.ceiling, hi])
    pts = np.concatenate(
        [bids, np.linspace(lo, hi, fill), special, special * (1 - _EPS), special * (1 + _EPS)]
    )
    nodes, inverse = np.unique(np.clip(pts, lo, hi), return_inverse=True)
    return nodes, inverse[: bids.size]


def _awards(nodes: np.ndarray, rival_bids: np.ndarray, award_fn: AwardFn,
            focal_fn: FocalFn | None = None) -> np.ndarray:
    """(nodes, samples) volume won by a bid at each node (column 0) against each rival profile,
    from a single award_fn call on the stacked profiles, or from focal_fn when given."""
    m, (s, k) = nodes.size, rival_bids.shape
    if focal_fn is not None:
        award = np.asarray(focal_fn(nodes, rival_bids), dtype=float)
        if award.shape != (m, s):
            raise ValueError(f"focal_fn returned shape {award.shape}, expected {(m, s)}")
        return np.nan_to_num(award)
    rows = np.empty((m * s, k + 1))
    rows[:, 0] = np.repeat(nodes, s)
    rows[:, 1:] = np.tile(rival_bids, (m, 1))
    award = np.asarray(award_fn(rows), dtype=float)
    if award.shape != rows.shape:
        raise ValueError(f"award_fn returned shape {award.shape}, expected {rows.shape}")
    return np.nan_to_num(award[:, 0]).reshape(m, s)


def _extend_tail(q: np.ndarray, surv: np.ndarray, q_min: float) -> np.ndarray:
    """Replace on-path volumes below `q_min` (too few sampled wins) by a power law in the
    survival, Q ~ surv**alpha, through the last reliable point and the one with four times its
    volume; exact for a lowest-price single winner, where Q = surv**(n-1)."""
    ok = np.flatnonzero(q >= q_min)
    if ok.size < 2 or ok[-1] == q.size - 1:
        return q
    r = ok[-1]
    p = min(int(np.flatnonzero(q <= 4.0 * q[r])[0]), r - 1)
    if not (surv[r] > 0 and surv[p] > surv[r] and q[p] > q[r]):
        return q
    alpha = math.log(q[p] / q[r]) / math.log(surv[p] / surv[r])
    return np.concatenate([q[: r + 1], q[r] * (surv[r + 1 :] / surv[r]) ** alpha])


def _envelope_bids(c: np.ndarray, q: np.ndarray, top_profit: float) -> np.ndarray:
    """b(c) = c + (pi_top + int_c^top Q) / Q(c): the bid at which the expected profit of every
    cost type obeys the envelope theorem, pi'(c) = -Q(c), given on-path volumes Q (non-increasing).
    Q is integrated piecewise log-linearly (exact for the exponential fall with many rivals)."""
    dc = np.diff(c)
    qa, qb = q[:-1], q[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        loglin = dc * (qa - qb) / np.log(qa / qb)
    ok = (qa > 0) & (qb > 0) & (np.abs(qa - qb) > 1e-12 * qa)
    seg = np.where(ok, loglin, 0.5 * dc * (qa + qb))
    rent = top_profit + np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]])
    return np.where(q > 0, c + rent / np.maximum(q, 1e-300), c)


def _deviations(
    c: np.ndarray,
    bids: np.ndarray,
    on: np.ndarray,
    nodes: np.ndarray,
    awards: np.ndarray,
    gain: float,
    gate: float,
) -> np.ndarray:
    """Best node bid per grid cost where it beats the current bid significantly, else nan.

    Taken when the expected profit gain less _Z standard errors of the paired per-sample
    difference (same rival profiles) exceeds `gain` times the current profit. Local moves, other
    than onto a binding 50% `gate` (nan if none), are left to the envelope; what remains are
    the discrete gains that gates create.
    """
    vol = awards.mean(axis=1)
    cov = np.atleast_2d(np.cov(awards, bias=True))
    dev = nodes[None, :] - c[:, None]
    cur = (bids - c)[:, None]
    diff = dev * vol[None, :] - cur * vol[on][:, None]
    var = dev**2 * np.diag(cov)[None, :] + cur**2 * np.diag(cov)[on][:, None]
    var -= 2.0 * dev * cur * cov[on, :]
    lcb = diff - _Z * np.sqrt(np.maximum(var, 0.0) / awards.shape[1])
    local = (np.abs(nodes[None, :] - bids[:, None]) < _LOCAL * cur) & (nodes[None, :] != gate)
    lcb = np.where((dev >= 0) & ~local, lcb, -np.inf)
    j = np.argmax(lcb, axis=1)
    take = lcb[np.arange(c.size), j] > gain * np.maximum(cur[:, 0] * vol[on], 0.0)
    return np.where(take, nodes[j], np.nan)


def _solve(ctx: BidContext, eq: Equilibrium) -> BidFunction:
    """Damped envelope iteration with significant deviations (method in Equilibrium)."""
    if ctx.award_fn is None:
        raise ValueError("Equilibrium needs BidContext.award_fn (the unit's award rule)")
    hi, harbour = ctx.bid_cap, 0.5 * float(ctx.ceiling)
    c, surv = _cost_grid(ctx, eq.grid)
    rivals = _rival_costs(ctx, eq.samples, eq.seed)
    absent = (rivals > hi) if ctx.ceiling_is_cap else np.zeros(rivals.shape, dtype=bool)
    b = c + (c[-1] - c) / ctx.n_bidders  # c[-1] is the ceiling unless all costs lie below it
    change, it, late = math.inf, 0, []
    while it < eq.iterations and change >= eq.tol:
        it += 1
        rival_bids = np.where(absent, np.nan, np.interp(rivals, c, b))
        nodes, on = _nodes(b, float(c[0]), ctx, eq.candidates)
        awards = _awards(nodes, rival_bids, ctx.award_fn, ctx.focal_fn)
        vol = awards.mean(axis=1)
        q = _extend_tail(np.minimum.accumulate(vol[on]), surv, _MIN_HITS / eq.samples)
        top = max(float(np.max((nodes - c[-1]) * vol)), 0.0)
        target = np.minimum(_envelope_bids(c, q, top), hi)
        if it == 1:  # b0 only seeds the rivals: jump straight to its envelope
            new = target
        else:
            at, above = np.interp([harbour, harbour * (1 + _EPS)], nodes, vol)
            gate = harbour if above < at else math.nan
            if above < at:  # the 50% gate binds: bids on or below it stay there
                target = np.where(b < harbour, np.minimum(target, harbour), target)
                target = np.where(b == harbour, harbour, target)
            dev = _deviations(c, b, on, nodes, awards, eq.gain, gate)
            new = eq.damping * b + (1.0 - eq.damping) * np.where(np.isnan(dev), target, dev)
            new = np.where(dev == gate, gate, new)  # land on the gate, not just above it
        new = np.minimum(np.maximum(np.maximum.accumulate(new), c), hi)
        change, b = float(np.max(np.abs(new - b))), new
        if it > eq.iterations // 2:
            late.append(b)
    if change >= eq.tol and late:  # no fixed point (gate cycles): average the last half
        b = np.mean(late, axis=0)
    c.setflags(write=False)
    b.setflags(write=False)
    return BidFunction(c, b, it, change, change < eq.tol)


@dataclass(frozen=True)
class Equilibrium:
    """Bid with a numerically computed symmetric Bayes-Nash bid function b(c), cached per context.

    Pay-as-bid, awards by the unit's rule (``ctx.award_fn``). Method:
    - cost grid: `grid` quantiles of the cost distribution truncated at the ceiling (if a cap);
    - rivals: `samples` draws of n-1 costs (scrambled Sobol' points seeded with `seed`), fixed
      across iterations; rivals above a capped ceiling do not bid (nan), the others bid the
      current b(c) interpolated linearly on the grid (monotone);
    - each iteration makes one award_fn call on the stacked profiles [bid, rivals] for bids at
      nodes: every current b(c), `candidates` evenly spaced bids, and 0.5*ceiling and the
      ceiling with points just either side; V(bid) is the mean award in column 0;
    - envelope step: with on-path volumes Q(c) = V(b(c)) (extrapolated as a power law of the
      survival where fewer than 16 samples win), b(c) = c + (pi_top + int_c^top Q) / Q(c); for a
      lowest-price single winner this is the closed form whatever b was, and in general its
      fixed points satisfy each type's first-order condition;
    - deviation step: a type moves to another node bid (below or above) when that raises its
      expected profit by more than `gain` plus 3 standard errors (this is how the 50% safe
      harbour and 1.8x knock-out bids appear); a binding 50% gate holds bids at 0.5*ceiling;
    - start b0(c) = c + (top - c)/n with top = min(ceiling, highest cost); its envelope is
      taken undamped, then b <- damping b + (1 - damping) target, made non-decreasing and kept
      in [c, ceiling]; stop when the largest change < `tol`, else after `iterations` return the
      mean of the last half of the iterates (rules with gates can cycle). Costs off the grid
      are interpolated.
    Plain damped best responses are unstable here: a pay-as-bid best response depends on the
    slope of the rivals' bid function, so grid noise grows; the envelope form integrates instead.
    """

    grid: int = 48  # cost grid points
    samples: int = 512  # rival cost profiles
    iterations: int = 60  # maximum iterations
    damping: float = 0.5  # weight on the previous bid function, in [0, 1)
    seed: int = 0  # seed of the rival-cost Generator
    candidates: int = 32  # evenly spaced deviation bids from the lowest cost to the ceiling
    tol: float = 1e-4  # convergence tolerance on bids (fraction of the reference price)
    gain: float = 0.02  # relative profit gain a deviation needs, beyond its sampling error
    name: ClassVar[str] = "equilibrium"

    def __post_init__(self) -> None:
        for fname, low in (("grid", 3), ("samples", 2), ("iterations", 1), ("candidates", 2)):
            value = getattr(self, fname)
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"Equilibrium.{fname} must be an integer >= {low}, got {value!r}")
        if not (0.0 <= self.damping < 1.0):
            raise ValueError(f"Equilibrium.damping must be in [0, 1), got {self.damping!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"Equilibrium.seed must be an integer, got {self.seed!r}")
        _check_positive("Equilibrium", "tol", self.tol)
        if not (math.isfinite(self.gain) and self.gain >= 0):
            raise ValueError(f"Equilibrium.gain must be a finite number >= 0, got {self.gain!r}")

    def bid_function(self, ctx: BidContext) -> BidFunction:
        """The cached bid function for this context (same inputs return the same object)."""
        key = (self, ctx.n_bidders, ctx.award_key, ctx.costs, float(ctx.ceiling))
        key += (ctx.ceiling_is_cap,)
        found = _CACHE.get(key)
        if found is None:
            found = _load(key)
            if found is None:
                found = _solve(ctx, self)
                _store(key, found)
            _CACHE[key] = found
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        else:
            _CACHE.move_to_end(key)
        return found

    def bids(self, costs: np.ndarray, ctx: BidContext) -> np.ndarray:
        """Equilibrium bids for these costs; nan where cost > ceiling (cap)."""
        costs = _as_costs(costs)
        return _admissible(self.bid_function(ctx)(costs), costs, ctx)


def cache_dir() -> Path | None:
    """Folder of the on-disk bid-function cache (VBP_CACHE_DIR, else ~/.cache/vbp); None if off.

    Bid functions are deterministic in their key, so a cached one equals a recomputed one; the
    disk cache only saves time across processes and runs. VBP_CACHE_DIR=off disables it.
    """
    env = os.environ.get("VBP_CACHE_DIR")
    if env is not None:
        return None if env.lower() in ("", "off", "0", "none") else Path(env)
    return Path.home() / ".cache" / "vbp"


@functools.cache
def source_digest(names: tuple[str, ...] | None = None) -> str:
    """SHA-256 of the package's source (the named modules, else every one): what the on-disk caches
    key on, so a result is only reused by the code that made it."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(here.glob("*.py")) if names is None else (here / n for n in names):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def solver_digest() -> str:
    """Digest of the sources a bid function depends on (this module's solver and the award rules):
    a bid function on disk is only reused by the code that solved it, so editing either never
    returns a stale one. Other modules (the CLI, metrics, plots) leave the disk cache valid."""
    return source_digest(("strategies.py", "rules.py"))[:16]


def _key_path(key: Hashable) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(repr(key).encode()).hexdigest()
    return root / "bidfn-v1" / solver_digest() / digest[:2] / f"{digest}.npz"


def _load(key: Hashable) -> BidFunction | None:
    path = _key_path(key)
    if path is None or not path.exists():
        return None
    try:
        with np.load(path) as z:
            if str(z["key"]) != repr(key):
                return None
            c, b = z["costs"].copy(), z["bids"].copy()
            meta = z["meta"]
    except (OSError, ValueError, KeyError):
        return None
    c.setflags(write=False)
    b.setflags(write=False)
    return BidFunction(c, b, int(meta[0]), float(meta[1]), bool(meta[2]))


def _store(key: Hashable, bf: BidFunction) -> None:
    path = _key_path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(repr(key)), costs=bf.costs, bids=bf.bids,
                     meta=np.array([bf.iterations, bf.max_change, float(bf.converged)]))
        os.replace(tmp, path)
    except OSError:  # a read-only or full disk only costs time
        pass


# --------------------------------------------------------------------------- registry

STRATEGIES: dict[str, type] = {"cost_plus": CostPlus, "equilibrium": Equilibrium}


def make_strategy(name: str, **params) -> Strategy:
    """Build a strategy by registry name; unknown names or parameters raise ValueError."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"strategy {name!r} got unknown parameter(s) {unknown}; "
            f"known: {', '.join(sorted(known))}"
        )
    return cls(**params)
