"""Calibration by simulated method of moments, with common random numbers and a surrogate.

Few structural parameters are fitted to many published moments of the rounds up to batch 7:

- drugs: `cost_median_drug`, `cost_sigma_drug` (how low generic costs go, which sets how deep the
  competitive bids can fall and how many bidders reach the gates), `cost_tau_drug` (how much
  molecules differ in cost relative to their reference price, which sets the deepest cuts),
  `cost_firm_share_drug` (how much a firm's products share its efficiency, which sets how many firms
  win something) and `originator_premium` (the brand margin an originator gives up by winning, why
  originators bid high and mostly lose); fitted to every drug round's average cut, maximum cut,
  share of bidding firms that win, winning products per molecule where bidding products are
  published, and every round's share of listed molecules procured; `market.ceiling_ratio_drug`
  (the drug ceilings / pre-VBP prices, not published; prior 1.0), measured because batches 2-5
  publish cuts against the pre-VBP price and batch 7 against the ceiling;
- devices and insulin: one cost level each (`cost_median_stent`, `cost_median_joint`,
  `cost_median_insulin`), fitted to the round's average cut and its winner counts.

Procedure (per group): simulate the moments at a scrambled Sobol design over the parameter box,
each point with the same replication seeds (common random numbers, so differences between points
are not noise). Minimise the weighted squared distance to the published moments on a thin-plate
spline through that design, simulate the minimiser, add it to the spline and repeat (the control
refit, `REFIT_STEPS` simulations). Around the control's point, simulate a local design, fit each
moment by a quadratic in the (log) parameters, minimise on it and simulate its optimum; while that
moves the best simulated point, repeat around the new best with half the radius (`LOCAL_ROUNDS`).
The fit is the simulated point that fits best, whichever stage placed it; the last local
quadratic's slopes give the standard errors. Leave-one-round-out and rolling origin: the whole
procedure with one drug round's moments (or the later rounds') left out - the spline refinement
on the global design and the refit's own simulated points, then a trust region of its own - and
the left-out round read from the refit's simulation. Those residuals, less each round's
replication spread, give the model's structural error, which widens forecast intervals
(`vbp.predictive`). Savings are never moments: the cumulative savings path stays an
out-of-sample check. The joint round has few competition units, so its group simulates five times
the replications (`Group.reps_scale`).
Evaluations are cached on disk, so an interrupted calibration resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.interpolate import RBFInterpolator
from scipy.optimize import minimize
from scipy.stats import qmc

from vbp import data, metrics
from vbp.errors import InputError, SimulationError
from vbp.executors import open_executor, run_tasks
from vbp.model import run_replication
from vbp.records import to_frames
from vbp.scenario import Scenario, apply_overrides, load_raw, scenario_from_raw, scenario_with_overrides
from vbp.strategies import cache_dir, source_digest

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Param", "Moment", "Group", "GROUPS", "moments_for", "simulate_moments", "calibrate_group",
           "GroupFit", "calibrate", "to_toml", "model_error"]


@dataclass(frozen=True)
class Param:
    path: str  # dotted scenario path
    low: float
    high: float
    why: str
    integer: bool = False  # round to a whole number (counts)
    prior: float | None = None  # an assumed value the fit is drawn towards (penalty ((ln x - ln prior) / prior_sd)^2)
    prior_sd: float = 0.0  # its log-sd: how far from the prior the value may plausibly be

    @property
    def name(self) -> str:
        return self.path.split(".")[-1]


@dataclass(frozen=True)
class Moment:
    name: str  # e.g. "batch3.avg_cut"
    round: str
    stat: str  # column of metrics.round_metrics, or derived
    published: float
    scale: float  # tolerance that weights it: squared error / scale^2


@dataclass(frozen=True)
class Group:
    name: str
    rounds: tuple[str, ...]  # rounds simulated for this group (including predecessors)
    params: tuple[Param, ...]
    # Sobol design size. Every refit's spline is fitted through this design, so it decides which
    # basin each refinement starts in: the drug group's seven parameters need far more points than
    # the quadratic's 36 coefficients (docs/validation.md, "How far the search can be trusted").
    design: int
    # replications per point = `reps` x this: a round of few competition units is noisy, and its
    # moments need more replications to be measured as well as the scales assume
    reps_scale: int = 1


GROUPS = (
    Group("drug", ("pilot", "expansion", "batch2", "batch3", "batch4", "batch5", "batch7"), (
        Param("agents.cost_median_drug", 0.05, 0.6, "median generic unit cost / reference price"),
        Param("agents.cost_sigma_drug", 0.3, 1.6, "spread of generic costs (log-sd)"),
        Param("agents.originator_premium", 0.02, 1.0, "brand margin an originator forgoes by winning"),
        Param("rounds.pilot.bidding_products", 31, 124,
              "products bidding in the pilot: not published (1-4 per molecule), estimated", integer=True),
        Param("agents.cost_tau_drug", 0.05, 1.5,
              "molecules differ in how far their reference price sits above generic cost (sets maximum cuts)"),
        Param("agents.cost_firm_share_drug", 0.02, 0.98,
              "a firm's products share its efficiency, so its wins are correlated (sets the firm winner share)"),
        Param("market.ceiling_ratio_drug", 0.5, 1.3,
              "ceilings of batches 2-7 / pre-VBP reference prices: not published; batches 2-5 publish cuts against "
              "the reference, batch 7 against the ceiling, so the two sets of cuts measure it",
              prior=1.0, prior_sd=0.25),
    ), 160),
    Group("stent", ("stents",), (Param("agents.cost_median_stent", 0.005, 0.2, "stent unit cost"),), 8),
    Group("joint", ("joints",), (
        Param("agents.cost_median_joint", 0.02, 0.5, "joint unit cost"),
        Param("rulebooks.joint.gate_ratio", 1.2, 6.0,
              "the first round's win threshold was not published: estimated from the winner share"),
    ), 16, reps_scale=5),
    Group("insulin", ("insulin",), (Param("agents.cost_median_insulin", 0.05, 0.9, "insulin unit cost"),), 8),
)

#: Earlier drug rounds a rolling-origin forecast is fitted on, at least (the first such forecast,
#: of batch 3, fits the seven drug parameters to the eleven moments of the pilot, the expansion and
#: batch 2, with the ceiling ratio's prior).
ROLLING_MIN_ROUNDS = 3

#: Times each held-out refit is simulated: after each simulation the point joins that refit's
#: surface and the refit is repeated.
REFIT_STEPS = 4

#: Local designs at most: the first around the control's point (a held-out refit's: its spline
#: refinement's), each later one around the best simulated point so far, with half the radius,
#: while that point keeps moving.
LOCAL_ROUNDS = 3

#: Smoothing of the refits' thin-plate spline: the design's moments are 4-replication means, so the
#: surface need not pass through each exactly.
REFIT_SMOOTHING = 1e-3

# Weights: a moment's squared error is divided by its scale squared, the scale reflecting how well
# the moment is measured. Average cuts are official figures (H) to the point: 1.5 points, the
# simulation error of a 4-replication mean. Maximum cuts are one molecule each (batch 2's is M):
# 5 points. Winner and procured shares rest on disputed bidder counts (batch 4: 152 or 126 firms):
# 0.05. Winners per procured unit: 15%.
_SCALES = {"avg_cut": 0.015, "max_cut": 0.05, "winners_per_unit": None, "winner_share": 0.05,
           "procured_share": 0.05}


def moments_for(rounds: tuple[str, ...]) -> list[Moment]:
    """Published moments of these rounds (from targets.toml; savings are never moments)."""
    from vbp.data import read_toml

    table = read_toml("rounds.toml")["rounds"]
    listed = {k: v["molecules"]["value"] for k, v in table.items()}

    def published(name: str) -> dict:  # a round field's value, where published (H/M) only
        return {k: v[name]["value"] for k, v in table.items() if v.get(name, {}).get("confidence") in ("H", "M")}
    # the share of bidders that win only where the bidder count is published: the expansion's 77 is
    # an unverified figure (batch 2 also has 77, as its winning firms) and insulin's 12 an
    # assumption, so their shares would measure a guess, not the model
    bidders = published("bidding_firms")
    # products counted only where published: elsewhere they come from an assumed products-per-firm
    products = published("bidding_products")
    out = []
    for rid in rounds:
        t = metrics.round_targets().get(rid, {})
        if "avg_cut" in t:
            out.append(Moment(f"{rid}.avg_cut", rid, "avg_cut", t["avg_cut"], _SCALES["avg_cut"]))
        if "max_cut" in t and rid not in ("stents", "insulin"):  # stents' 95% is an import average; insulin's is ">70%"
            out.append(Moment(f"{rid}.max_cut", rid, "max_cut", t["max_cut"], _SCALES["max_cut"]))
        won = t.get("winning_products")
        units = t.get("products_won") if rid not in ("stents", "joints") else 1
        # Winners per unit only where the round's bidding products are published (or it is the
        # pilot's single winner): elsewhere the count of bidders per molecule is an assumption
        # (agents.products_per_firm), and the winner count would measure that, not costs.
        if won and units and rid not in ("joints", "insulin") and (rid in products or rid in ("pilot", "stents")):
            per = won / units
            out.append(Moment(f"{rid}.winners_per_unit", rid, "winners_per_unit", per, 0.15 * per))
        if t.get("winning_firms") and bidders.get(rid):
            share = t["winning_firms"] / bidders[rid]
            out.append(Moment(f"{rid}.winner_share", rid, "winner_share", share, _SCALES["winner_share"]))
        if t.get("products_won") and rid not in ("stents", "joints", "insulin"):  # molecules with a winner
            out.append(Moment(f"{rid}.procured_share", rid, "procured_share", t["products_won"] / listed[rid],
                              _SCALES["procured_share"]))
    return out


def _scenario(base_raw: dict, file: str, rounds: tuple[str, ...], theta: dict[str, float]) -> Scenario:
    raw = json.loads(json.dumps(base_raw, default=str))
    raw["rounds"] = {k: v for k, v in raw["rounds"].items() if k in rounds}
    sets = [(p, v) for p, v in theta.items() if p.split(".")[0] != "rounds" or p.split(".")[1] in rounds]
    return scenario_from_raw(apply_overrides(raw, sets), file)


def simulate_moments(scenario: Scenario, moments: list[Moment], reps: int, seed: int) -> dict[str, float]:
    """Mean of each moment over `reps` replications (seeds shared across parameter values)."""
    frames = to_frames([run_replication(scenario, seed, r) for r in range(reps)])
    rm = metrics.round_metrics(frames["units"], frames["bids"])
    rm["procured_share"] = rm["procured"] / rm["units"]
    means = rm.groupby("round")[["avg_cut", "max_cut", "winners_per_unit", "winner_share",
                                 "procured_share"]].mean()
    return {m.name: float(means.loc[m.round, m.stat]) for m in moments}


def code_digest() -> str:
    """Digest of the package's source: cached evaluations are only reused by the code that made them."""
    return source_digest()


def _eval_key(scenario: Scenario, reps: int, seed: int, names: list[str]) -> str:
    text = json.dumps([scenario.digest(), reps, seed, names, code_digest()])
    return hashlib.sha256(text.encode()).hexdigest()


def _evaluate(args) -> dict[str, float]:
    scenario, moments, reps, seed = args
    names = [m.name for m in moments]
    root = cache_dir()
    path = None if root is None else root / "calibration-v1" / f"{_eval_key(scenario, reps, seed, names)}.json"
    if path is not None and path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    out = simulate_moments(scenario, moments, reps, seed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(out))
            tmp.replace(path)
        except OSError:
            pass
    return out


def _to_unit(x: np.ndarray, params: tuple[Param, ...]) -> np.ndarray:
    lo = np.log([p.low for p in params])
    hi = np.log([p.high for p in params])
    return (np.log(x) - lo) / (hi - lo)


def _from_unit(u: np.ndarray, params: tuple[Param, ...]) -> np.ndarray:
    lo = np.log([p.low for p in params])
    hi = np.log([p.high for p in params])
    return np.exp(lo + np.asarray(u) * (hi - lo))


def _features(u: np.ndarray) -> np.ndarray:
    """Full quadratic in the unit-scaled log parameters."""
    u = np.atleast_2d(u)
    cols = [np.ones(len(u))] + [u[:, i] for i in range(u.shape[1])]
    cols += [u[:, i] * u[:, j] for i in range(u.shape[1]) for j in range(i, u.shape[1])]
    return np.column_stack(cols)


@dataclass
class GroupFit:
    group: str
    params: dict[str, float]
    moments: list[Moment]
    design_u: np.ndarray
    design_y: np.ndarray  # (points, moments)
    coef: np.ndarray  # (features, moments)
    r2: dict[str, float]
    objective_surrogate: float
    confirmed: dict[str, float]  # simulated moments at the optimum
    objective: float
    loro: list[dict]  # leave-one-round-out: each drug round's average cut, refitted without the round
    loro_share: list[dict] = field(default_factory=list)  # the same refits' winner share, where published
    rolling: list[dict] = field(default_factory=list)  # rolling origin: each round from the earlier ones only
    refit_control: dict | None = None  # the refit procedure with nothing left out, simulated
    uncertainty: dict | None = None  # local standard errors and correlations of the parameters
    point: str = ""  # which simulated point the fit is: the surrogate's optimum, a refinement, a design point


def _rounded(x: np.ndarray, params: tuple[Param, ...]) -> np.ndarray:
    """Parameter values with the counts rounded to whole numbers, as the simulator takes them."""
    return np.array([round(v) if p.integer else v for p, v in zip(params, x)])


def _named(u: np.ndarray, params: tuple[Param, ...]) -> dict[str, float]:
    """A refit's parameter values by full path (counts rounded, as simulated), so a reader can see
    what moved without the round."""
    return {p.path: float(v) for p, v in zip(params, _rounded(_from_unit(u, params), params))}


def _prior_penalty(u: np.ndarray, params: tuple[Param, ...]) -> float:
    """Sum over parameters with a prior of ((ln x - ln prior) / prior_sd)^2, at unit point u."""
    x = _from_unit(u, params)
    return float(sum(((np.log(v) - np.log(p.prior)) / p.prior_sd) ** 2
                     for p, v in zip(params, x) if p.prior is not None))


def _distance(u: np.ndarray, y: np.ndarray, pub: np.ndarray, w: np.ndarray, keep: np.ndarray,
              params: tuple[Param, ...]) -> float:
    """The objective at unit point u with moments y: weighted squared distance of the kept moments
    to the published ones, plus the priors' penalty."""
    return float(np.sum(w[keep] * (y[keep] - pub[keep]) ** 2)) + _prior_penalty(u, params)


def _objective(surface, pub: np.ndarray, w: np.ndarray, keep: np.ndarray, params: tuple[Param, ...]):
    """Weighted squared distance of the surrogate's moments to the kept published ones, plus priors.
    `surface`: the quadratic's coefficients, or a callable from unit points to moments."""
    predict = surface if callable(surface) else (lambda x: _features(x) @ surface)

    def f(u):
        return _distance(u, predict(np.atleast_2d(u))[0], pub, w, keep, params)
    return f


def _minimise(f: Callable, dim: int, starts: np.ndarray) -> np.ndarray:
    best = None
    for s in starts:
        r = minimize(f, s, method="L-BFGS-B", bounds=[(0.0, 1.0)] * dim)
        if best is None or r.fun < best.fun:
            best = r
    return np.clip(best.x, 0.0, 1.0)


def calibrate_group(group: Group, base_raw: dict, file: str, *, reps: int, seed: int, workers: int,
                    progress: Callable[[str, int, int], None] | None = None, held_out: bool = True) -> GroupFit:
    """Global design, refits on its spline, local design and quadratic, best simulated point, for one
    parameter group. `held_out=False` skips the drug group's leave-one-round-out and rolling refits
    (most of the run time); the fit itself is the same, since every point is simulated alike."""
    moments = moments_for(group.rounds)
    dim = len(group.params)
    with warnings.catch_warnings():  # a design size that is not a power of 2 is fine here
        warnings.simplefilter("ignore", UserWarning)
        u1 = qmc.Sobol(dim, scramble=True, seed=seed).random(group.design)
    u1 = np.vstack([u1, np.full(dim, 0.5)])

    def scen(x):
        values = {p.path: (int(round(v)) if p.integer else float(v)) for p, v in zip(group.params, x)}
        return _scenario(base_raw, file, group.rounds, values)

    names = [m.name for m in moments]
    pub = np.array([m.published for m in moments])
    w = 1.0 / np.array([m.scale for m in moments]) ** 2
    keep_all = np.ones(len(moments), dtype=bool)

    def simulate(points: np.ndarray, label: str) -> np.ndarray:
        tasks = [(scen(_from_unit(row, group.params)), moments, reps, seed) for row in points]
        res = _run_tasks(tasks, workers, lambda i, n: progress and progress(f"{group.name} {label}", i, n))
        return np.array([[r[n] for n in names] for r in res])

    # stage 1: a global design over the box
    y1 = simulate(u1, "global")
    # stage 2: the fit with every moment kept (the control), refined on a spline through the global
    # design and its own simulated points; for the drug rounds, the held-out refits alongside it
    loro, loro_share, rolling, control, (own_u, own_y) = _refits(
        group, moments, u1, y1, simulate, held_out=held_out and group.name == "drug", seed=seed)
    u_c = _to_unit(np.array([control["params"][p.path] for p in group.params], dtype=float), group.params)
    # stage 3: local designs around the control's point (a trust region, `_trust_region`)
    n_local = _local_size(group)
    cand_u, cand_y = np.vstack([own_u, u1]), np.vstack([own_y, y1])
    sources = [f"control refit step {k + 1}" for k in range(len(own_u))] + ["global design point"] * len(u1)
    tr = _trust_region(group.params, pub, w, keep_all, u_c, cand_u, cand_y, sources, None,
                       _local_sobol(dim, seed, group.design), n_local,
                       simulate, "")
    local_u, local_y, coef, surrogate = tr.designs_u, tr.designs_y, tr.coef, tr.surrogate
    r2 = {n: float(v) for n, v in zip(names, tr.r2)}
    cand_u, cand_y, sources, obj, best = tr.cand_u, tr.cand_y, tr.sources, tr.obj, tr.best
    u = np.vstack([u1, *local_u])
    y = np.vstack([y1, *local_y])
    if not np.isfinite(obj[best]):
        raise SimulationError(f"no simulated point of the {group.name} calibration has every moment defined")
    u_hat = cand_u[best]
    theta = _rounded(_from_unit(u_hat, group.params), group.params)
    return GroupFit(group.name, {p.path: (int(v) if p.integer else float(v)) for p, v in zip(group.params, theta)},
                    moments, u, y, coef, r2, float(surrogate(u_hat)),
                    {n: float(v) for n, v in zip(names, cand_y[best])}, float(obj[best]), loro,
                    loro_share, rolling, control if group.name == "drug" else None,
                    _uncertainty(coef, _to_unit(theta.astype(float), group.params), moments, group.params),
                    sources[best])


def _local_size(group: Group) -> int:
    """Points of a local design: more than the quadratic has coefficients, or its R² means nothing.
    Not tied to the global design's size: the local designs are most of a calibration's run time."""
    return max(8, _features(np.zeros((1, len(group.params)))).shape[1] + 8)


def _local_sobol(dim: int, seed: int, design: int) -> qmc.Sobol:
    """The Sobol sequence the calibration's local designs are drawn from: the global design's,
    past its first `design` points. Every held-out refit's trust region draws the same designs
    (scaled to its own centre) as the calibration's."""
    sob = qmc.Sobol(dim, scramble=True, seed=seed)
    sob.fast_forward(design)
    return sob


@dataclass
class _Local:
    """What a trust region leaves: every simulated candidate (point, moments, which step placed it
    and the reading of the surface that placed it), the objectives over the kept moments and the
    best, and the local designs with the last one's quadratic (coefficients, R² per moment and the
    surrogate objective)."""
    cand_u: np.ndarray
    cand_y: np.ndarray
    sources: list[str]
    readings: list[np.ndarray] | None
    obj: np.ndarray
    best: int
    designs_u: list[np.ndarray]
    designs_y: list[np.ndarray]
    coef: np.ndarray
    r2: np.ndarray  # per moment
    surrogate: Callable


def _trust_region(params: tuple[Param, ...], pub: np.ndarray, w: np.ndarray, keep: np.ndarray,
                  centre: np.ndarray, cand_u: np.ndarray, cand_y: np.ndarray, sources: list[str],
                  readings: list[np.ndarray] | None, sob: qmc.Sobol, n_local: int, simulate: Callable,
                  label: str) -> _Local:
    """Local designs, where a quadratic is accurate: the first around `centre`; while a round moves
    the best simulated point (for the `keep` moments), the next around that point with half the
    radius, up to LOCAL_ROUNDS. Each round fits a quadratic per moment, minimises the kept
    objective on it and simulates the optimum.

    `cand_*`, `sources` (and `readings`, when tracked): the points already simulated, which the
    best is chosen among too. The calibration runs it with every moment kept; each held-out refit
    with its kept moments, so no left-out moment places a point."""
    dim = len(params)
    designs_u, designs_y = [], []
    half = 0.2
    for rnd in range(1, LOCAL_ROUNDS + 1):
        tag = "" if rnd == 1 else f" (round {rnd})"
        lo, hi = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
        local = np.vstack([lo + sob.random(n_local) * (hi - lo), centre])
        y2 = simulate(local, label + ("local" if rnd == 1 else f"local round {rnd}"))
        ok = np.all(np.isfinite(y2), axis=1)
        coef, *_ = np.linalg.lstsq(_features(local[ok]), y2[ok], rcond=None)
        resid = y2[ok] - _features(local[ok]) @ coef
        r2 = 1 - resid.var(axis=0) / np.maximum(y2[ok].var(axis=0), 1e-12)
        surrogate = _objective(coef, pub, w, keep, params)
        order = np.argsort([surrogate(row) for row in local[ok]])
        u_q = _minimise(surrogate, dim, np.vstack([local[ok][order[:4]], centre]))
        u_q = _to_unit(_rounded(_from_unit(u_q, params), params), params)  # as simulated
        y_q = simulate(u_q[None], label + ("optimum" if rnd == 1 else f"optimum round {rnd}"))[0]
        designs_u.append(local)
        designs_y.append(y2)
        cand_u = np.vstack([u_q[None], cand_u, local])
        cand_y = np.vstack([y_q[None], cand_y, y2])
        sources = [f"surrogate optimum{tag}"] + sources + [f"local design point{tag}"] * len(local)
        if readings is not None:
            readings = [(_features(u_q) @ coef)[0]] + readings + list(_features(local) @ coef)
        # The best is the simulated point (all with the same seeds) that fits best: a quadratic's
        # optimum, one of the refinements, or a design point. A surface can mislead where a moment
        # bends, so none is taken on its word.
        obj = np.array([_distance(p, row, pub, w, keep, params) for p, row in zip(cand_u, cand_y)])
        best = int(np.argmin(np.where(np.isfinite(obj), obj, np.inf)))
        if np.array_equal(cand_u[best], centre):
            break
        centre, half = cand_u[best], half / 2
    return _Local(cand_u, cand_y, sources, readings, obj, best, designs_u, designs_y, coef, r2, surrogate)


def _uncertainty(coef: np.ndarray, u_hat: np.ndarray, moments: list[Moment], params: tuple[Param, ...]) -> dict:
    """Local standard errors of the fitted parameters, on the log scale.

    G = d moments / d ln(parameter) at the optimum, from the local quadratic (exact derivative by
    central differences); with the weights W = 1 / scale^2 read as the moments' error variances,
    and a prior adding 1 / prior_sd^2 of information, Var(ln theta) = (G' W G + P)^-1. A large se or
    a correlation near +-1 marks a direction the moments barely measure (a ridge). Local and
    asymptotic: a reading of the fit's curvature, not a confidence region.
    """
    scale = np.log([p.high for p in params]) - np.log([p.low for p in params])
    w = 1.0 / np.array([m.scale for m in moments]) ** 2
    h = 1e-4
    cols = []
    for k in range(len(params)):
        e = np.zeros(len(params))
        e[k] = h
        cols.append(((_features(u_hat + e) - _features(u_hat - e)) @ coef)[0] / (2 * h) / scale[k])
    g = np.column_stack(cols)
    info = g.T @ (w[:, None] * g) + np.diag([1.0 / p.prior_sd ** 2 if p.prior is not None else 0.0 for p in params])
    try:
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:  # a direction no moment or prior measures: unbounded
        cov = np.full_like(info, np.inf)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(se, se)
    x = _from_unit(u_hat, params)
    lo, hi = np.array([p.low for p in params]), np.array([p.high for p in params])
    low95 = _rounded(np.clip(x * np.exp(-1.96 * se), lo, hi), params)  # within the box searched
    high95 = _rounded(np.clip(x * np.exp(1.96 * se), lo, hi), params)
    return {"se_log": {p.path: float(v) for p, v in zip(params, se)},
            "low95": {p.path: float(v) for p, v in zip(params, low95)},
            "high95": {p.path: float(v) for p, v in zip(params, high95)},
            "order": [p.path for p in params], "correlation": corr.tolist(),
            "note": "local, from the quadratic surface at the optimum; Var(ln theta) = (G'WG + prior)^-1; "
                    "the 95% limits are clipped to the box searched"}


def _refits(group: Group, moments: list[Moment], u: np.ndarray, y: np.ndarray, simulate: Callable,
            *, held_out: bool, seed: int):
    """The control refit (nothing left out) and, if `held_out`, the leave-one-round-out and
    rolling-origin refits of the group's rounds, each simulated. `u`, `y`: the global Sobol design
    and its simulated moments; `simulate(points, label)`: the moments simulated at unit points.

    Each held-out refit follows the calibration's whole procedure with its moments kept: the spline
    refinement below, then its own trust region (`_trust_region`) around the point that gives. The
    control is the spline refinement with every moment kept; the calibration's trust region starts
    from it.

    Returns (loro, loro_share, rolling, control, (own_u, own_y)): rows of published, predicted
    (simulated at the refit), error, the reading of the surface that placed the point and the
    refit's parameters; control = what the spline refinement gives with every moment kept (its
    point, objective and average-cut MAE), the calibration's starting point; own_u, own_y = the
    control's simulated points.
    """
    names = [m.name for m in moments]
    pub = np.array([m.published for m in moments])
    w = 1.0 / np.array([m.scale for m in moments]) ** 2
    dim = len(group.params)
    # Refits can move anywhere in the box, so they need a surface valid across it: a thin-plate
    # spline. The quadratic is only accurate locally: over the whole box its leave-one-point-out
    # error in the average cuts is larger, and its optimum with no round left out sits in a corner
    # of the box that simulates worse than the calibrated point (docs/validation.md). Only the
    # global design's points enter: the local design is placed around the control, which all the
    # moments steer, the left-out round's and later rounds' included.
    fin = np.all(np.isfinite(y), axis=1)
    design_u, design_y = u[fin], y[fin]
    surface = _spline(design_u, design_y)
    cut_rounds = [r for r in group.rounds if f"{r}.avg_cut" in names]
    cuts = [names.index(f"{d}.avg_cut") for d in cut_rounds]
    # leave-one-round-out: every round's moments out in turn; rolling origin (forecasting as it
    # would have been done): fit on the earlier rounds only (the group's rounds are in bid-date
    # order), from the first round with three earlier ones; and the control
    fits = [("loro", r, None, np.array([m.round != r for m in moments])) for r in cut_rounds if held_out]
    for r in cut_rounds if held_out else ():
        earlier = group.rounds[:group.rounds.index(r)]
        if len([e for e in earlier if e in cut_rounds]) >= ROLLING_MIN_ROUNDS:
            fits.append(("rolling", r, list(earlier), np.array([m.round in earlier for m in moments])))
    fits.append(("control", None, None, np.ones(len(moments), dtype=bool)))
    # the rolling forecast of the last round keeps the same moments as leaving it out: one refit
    same = {i: next(j for j in range(i + 1) if np.array_equal(fits[j][3], fits[i][3])) for i in range(len(fits))}
    todo = sorted(set(same.values()))

    # Each refit is simulated, like the fit itself, and its left-out round's moments are read from
    # a simulation, not from the surface. The simulated point then joins that refit's own surface
    # and the refit is repeated (REFIT_STEPS times): the surface becomes exact where the refit
    # lands. Each refit's extra points are its own, so no refit sees points another one placed.
    own_u = [np.empty((0, dim)) for _ in fits]
    own_y = [np.empty((0, len(names))) for _ in fits]
    readings = [[] for _ in fits]  # the surface's reading at each of a refit's points
    steps = [[] for _ in fits]  # the step that simulated each of them
    for step in range(REFIT_STEPS):
        points, pending = [], {}
        for i in todo:
            keep = fits[i][3]
            base_u, base_y = np.vstack([design_u, own_u[i]]), np.vstack([design_y, own_y[i]])
            surf = surface if step == 0 else _spline(base_u, base_y)
            # started from the points that fit the kept moments best, so nothing left out steers it
            kept = [np.sum(w[keep] * (row[keep] - pub[keep]) ** 2) for row in base_y]
            starts = np.vstack([base_u[np.argsort(kept)[:4]], np.full(dim, 0.5)])
            x = _minimise(_objective(surf, pub, w, keep, group.params), dim, starts)
            x = _to_unit(_rounded(_from_unit(x, group.params), group.params), group.params)  # as simulated
            points.append(x)
            pending[i] = surf(x[None])[0]
        sims = simulate(np.array(points), f"refits, step {step + 1} of {REFIT_STEPS}")
        for i, x, row in zip(todo, points, sims):
            if np.all(np.isfinite(row)):  # a point where a moment is undefined cannot join a surface
                own_u[i], own_y[i] = np.vstack([own_u[i], x]), np.vstack([own_y[i], row])
                readings[i].append(pending[i])
                steps[i].append(step + 1)
    # The refinement's result is the best of its simulated points for the kept moments, or a global
    # design point that fits them better. Around it, each held-out refit then runs its own trust
    # region, as the calibration does around the control; the refit is the best simulated point.
    n_local = _local_size(group)
    design_readings = list(surface(design_u))
    chosen = {}  # refit -> (point, moments, source, surface reading, objective after spline, objective)
    for i in todo:
        kind, r, earlier, keep = fits[i]
        u_c, y_c, k = _held_out_choice(own_u[i], own_y[i], design_u, design_y, pub, w, keep, group.params)
        source = "design point" if k is None else f"refit step {steps[i][k]}"
        spline_obj = _distance(u_c, y_c, pub, w, keep, group.params)
        if kind == "control":
            chosen[i] = (u_c, y_c, source, None, spline_obj, spline_obj)
            continue
        what = f"refit without {r}" if kind == "loro" else f"refit on the rounds before {r}"
        tr = _trust_region(group.params, pub, w, keep, u_c, np.vstack([own_u[i], design_u]),
                           np.vstack([own_y[i], design_y]),
                           [f"refit step {s}" for s in steps[i]] + ["design point"] * len(design_u),
                           readings[i] + design_readings, _local_sobol(dim, seed, group.design),
                           n_local, simulate, f"{what}, ")
        chosen[i] = (tr.cand_u[tr.best], tr.cand_y[tr.best], tr.sources[tr.best], tr.readings[tr.best],
                     spline_obj, float(tr.obj[tr.best]))
    loro, loro_share, rolling, control, control_points = [], [], [], None, None
    for i, (kind, r, earlier, _) in enumerate(fits):
        j0 = same[i]
        u_c, y_c, source, reading, spline_obj, objective = chosen[j0]
        if kind == "control":
            control = {"params": _named(u_c, group.params), "refit": source,
                       "objective": objective,
                       "avg_cut_mae": float(np.mean(np.abs(y_c[cuts] - pub[cuts]))),
                       # how well each surface predicts a design point it was not fitted to
                       "spline_cv_rmse_avg_cut": _cv_rmse(design_u, design_y[:, cuts], _spline),
                       "quadratic_cv_rmse_avg_cut": _cv_rmse(design_u, design_y[:, cuts], _quadratic)}
            control_points = (own_u[j0], own_y[j0])
            continue
        for stat in ("avg_cut", "winner_share"):
            if (name := f"{r}.{stat}") not in names:
                continue
            j = names.index(name)
            row = {"round": r, "published": float(pub[j]), "predicted": float(y_c[j]),
                   "error": float(y_c[j] - pub[j]),
                   "surrogate": float(reading[j]),
                   "refit": source,
                   # the kept moments' objective where the refit ends, and where its spline
                   # refinement ended (before its trust region)
                   "objective": objective, "objective_spline": spline_obj}
            if kind == "rolling":
                row |= {"stat": stat, "trained_on": earlier}
            if stat == "avg_cut":
                row["params"] = _named(u_c, group.params)
            (rolling if kind == "rolling" else loro if stat == "avg_cut" else loro_share).append(row)
    return loro, loro_share, rolling, control, control_points


def _spline(u: np.ndarray, y: np.ndarray) -> Callable:
    """Thin-plate spline through the design's simulated moments (lightly smoothed)."""
    return RBFInterpolator(u, y, kernel="thin_plate_spline", smoothing=REFIT_SMOOTHING, degree=1)


def _quadratic(u: np.ndarray, y: np.ndarray) -> Callable:
    """Full quadratic least-squares surface through the design's simulated moments."""
    coef, *_ = np.linalg.lstsq(_features(u), y, rcond=None)
    return lambda x: _features(x) @ coef


def _cv_rmse(u: np.ndarray, y: np.ndarray, make: Callable) -> float:
    """Leave-one-design-point-out root mean squared error of a surface built by `make`."""
    err = [make(np.delete(u, i, 0), np.delete(y, i, 0))(u[i:i + 1])[0] - y[i] for i in range(len(u))]
    return float(np.sqrt(np.mean(np.square(err))))


def _held_out_choice(own_u: np.ndarray, own_y: np.ndarray, design_u: np.ndarray, design_y: np.ndarray,
                     pub: np.ndarray, w: np.ndarray, keep: np.ndarray, params: tuple[Param, ...]):
    """A refit's point, its simulated moments and the index of the point among its own (None for a
    design point): the best of its own simulated points for the kept moments, or the design point
    whose simulated kept moments (same seeds) fit better."""
    def obj(u_, y_):
        value = _distance(u_, y_, pub, w, keep, params)
        return value if np.isfinite(value) else np.inf
    own = [obj(p, row) for p, row in zip(own_u, own_y)]
    design = [obj(p, row) for p, row in zip(design_u, design_y)]
    k = int(np.argmin(own)) if own else None
    best = int(np.argmin(design)) if design else None
    if best is not None and (k is None or design[best] < own[k]):
        return design_u[best], design_y[best], None
    if k is None:
        raise SimulationError("no simulated point of a held-out refit has every moment defined")
    return own_u[k], own_y[k], k


def _run_tasks(tasks: list, workers: int, progress) -> list[dict]:
    """Evaluate design points, in this process or on the shared task loop (`vbp.executors`): a
    worker that dies is replaced and its points rerun, Ctrl-C stops the workers at once. In
    this process a failing point raises its own error; in a pool it becomes a SimulationError
    naming the point, once every other point has finished (and been cached)."""
    if workers <= 1 or len(tasks) == 1:
        out = []
        for i, t in enumerate(tasks):
            out.append(_evaluate(t))
            if progress:
                progress(i + 1, len(tasks))
        return out
    out: list = [None] * len(tasks)
    errors: dict[int, str] = {}
    finished = 0

    def done(i: int, result, error: str | None) -> None:
        nonlocal finished
        if error is None:
            out[i] = result
        else:
            errors[i] = error
        finished += 1
        if progress:
            progress(finished, len(tasks))

    with open_executor(workers) as backend:
        run_tasks(backend, _evaluate, ((i, (t,)) for i, t in enumerate(tasks)), done)
    if errors:
        i = min(errors)
        raise SimulationError(f"{len(errors)} of {len(tasks)} calibration points failed; the first "
                              f"(point {i + 1}): {errors[i]}. Rerun with --workers 1 to see its "
                              "traceback: finished points are cached")
    return out


def fitted_paths() -> set[str]:
    """Every parameter some group fits, by dotted path."""
    return {p.path for g in GROUPS for p in g.params}


def _with_fixed(raw: dict, file: str, fixed: Sequence[tuple[str, Any]]) -> dict:
    """The scenario with the fixed settings a calibration is made under (`vbp calibrate --set`),
    validated (a bad value is named as --set); a fitted parameter cannot be one of them."""
    sections = ("agents", "market", "dynamics", "rules", "optimizer", "rounds", "rulebooks")
    loose = [path for path, _ in fixed if path.split(".")[0] not in sections]
    if loose:
        raise InputError(f"{loose[0]} is not a model setting: a calibration can fix only paths under "
                         + ", ".join(sections), field="--set", value=loose[0])
    clash = sorted({path for path, _ in fixed} & fitted_paths())
    if clash:
        raise InputError(f"{clash[0]} is fitted, so it cannot be fixed: it is what the calibration estimates",
                         field="--set", value=clash[0])
    scenario_with_overrides(raw, list(fixed), file)
    return apply_overrides(raw, list(fixed))


def calibrate(*, reps: int = 4, seed: int = 20181206, workers: int = 2, groups: tuple[str, ...] | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              fixed: Sequence[tuple[str, Any]] = (), held_out: bool = True) -> list[GroupFit]:
    """Calibrate every parameter group of the national-history scenario (prior values as base),
    under the `fixed` settings (dotted path, value), if any: a model variant to fit."""
    # Start from the uncalibrated priors, whatever an earlier calibration wrote.
    raw, file = load_raw("national-history", calibrated=False)
    raw = _with_fixed(raw, file, fixed)  # a bad setting fails here, before any simulation
    base = json.loads(json.dumps(raw, default=str))
    chosen = [g for g in GROUPS if groups is None or g.name in groups]
    return [calibrate_group(g, base, file, reps=reps * g.reps_scale, seed=seed, workers=workers,
                            progress=progress, held_out=held_out)
            for g in chosen]


def to_toml(fits: list[GroupFit], *, command: str, seed: int, reps: int,
            fixed: Sequence[tuple[str, Any]] = (), held_out: bool = True) -> dict:
    """The calibration file's content: parameters, provenance, per-moment fit, LORO.

    Parameter values are written in full (TOML floats round-trip exactly): the recorded fit, the
    refits' predictions and `vbp reproduce` then all simulate the same point. A moment of a few
    replications can jump when a parameter's seventh digit moves (a molecule's award flips), so
    values rounded for display would not give the fit recorded beside them."""
    params = {}
    for f in fits:
        params.update(f.params)
    # Settings the fit was made under are part of what the simulation must use with it.
    params.update({path: value for path, value in fixed})
    doc = {
        "meta": {"date": dt.date.today().isoformat(), "command": command, "seed": seed,
                 "replications_per_point": reps,
                 "method": "simulated method of moments with common random numbers: Sobol design, fit refined "
                           "on a thin-plate spline through it and its own simulated points, local design and "
                           "quadratic around that, the best simulated point kept; held-out refits by the same "
                           "procedure on their kept moments (spline refinement on the global design, then a "
                           "trust region of their own)",
                 "note": "savings are not moments; the cumulative savings path is validated out of sample",
                 "fixed": [f"{path}={value}" for path, value in fixed],
                 # false: fitted without the held-out refits, so nothing out of sample is recorded
                 "held_out_refits": held_out},
        "parameters": params,
        "fit": {},
        "loro": [],
        "loro_winner_share": [],
        "rolling": [],
    }
    for f in fits:
        names = [m.name for m in f.moments]
        doc["fit"][f.group] = {
            "command": command,
            "date": doc["meta"]["date"],
            "parameters": {k: v for k, v in params.items() if k in f.params},
            **({"fixed": {path: value for path, value in fixed}} if fixed else {}),
            "why": {p.path: p.why for g in GROUPS if g.name == f.group for p in g.params},
            "priors": {p.path: {"value": p.prior, "log_sd": p.prior_sd}
                       for g in GROUPS if g.name == f.group for p in g.params if p.prior is not None},
            "objective": round(f.objective, 4),
            "objective_surrogate": round(f.objective_surrogate, 4),
            "point": f.point,
            "design_points": int(len(f.design_u)),
            "replications_per_point": reps * next(g.reps_scale for g in GROUPS if g.name == f.group),
            **({"uncertainty": {k: ({n: round(x, 4) for n, x in v.items()} if isinstance(v, dict)
                                    else [[round(c, 3) for c in row] for row in v] if k == "correlation" else v)
                                for k, v in f.uncertainty.items()}} if f.uncertainty else {}),
            "moments": [{"name": m.name, "published": m.published, "simulated": round(f.confirmed[m.name], 4),
                         "error": round(f.confirmed[m.name] - m.published, 4), "scale": round(m.scale, 4),
                         "surrogate_r2": round(f.r2[m.name], 3)} for m in f.moments if m.name in names],
        }
        # refits keep their parameter values (`params`): what a round left out moves, e.g. the
        # drug ceiling ratio without batch 7
        for key, rows in (("loro", f.loro), ("loro_winner_share", f.loro_share), ("rolling", f.rolling)):
            doc[key].extend(_rounded_row(row) for row in rows)
        if f.refit_control is not None:
            doc["refit_control"] = _rounded_row(f.refit_control)
    for key in ("loro_winner_share", "rolling"):
        if not doc[key]:
            del doc[key]
    return doc



def _rounded_row(row: dict) -> dict:
    """A refit's row as written: its figures to 4 decimals, its parameter values in full (so its
    prediction can be simulated again)."""
    return {k: (dict(v) if k == "params" else round(v, 4) if isinstance(v, float) else v)
            for k, v in row.items()}


#: Replications of the calibrated history used to measure each drug round's replication spread.
MODEL_ERROR_REPS = 20


def model_error(fits: list[GroupFit], *, seed: int, workers: int, reps: int = MODEL_ERROR_REPS,
                fixed: Sequence[tuple[str, Any]] = ()) -> dict | None:
    """The drug average cut's structural error, from the leave-one-round-out residuals, and the
    same for the share of bidding firms that win (`winner_share`).

    Simulates the national history at the fitted parameters (`reps` replications) for each drug
    round's replication spread, then `vbp.predictive`: the structural sd over all rounds (used by
    `vbp forecast` for its predictive intervals) and, per round, the interval its leave-one-round-out
    prediction would have had with an sd estimated without it, and whether it covers the published
    value. None when the drug group was not fitted.
    """
    from vbp import predictive
    from vbp.experiment import run

    drug = next((f for f in fits if f.group == "drug"), None)
    if drug is None or not drug.loro:
        return None
    raw, file = load_raw("national-history", calibrated=False)
    raw = _with_fixed(raw, file, fixed)
    params = {k: v for f in fits for k, v in f.params.items()}
    scenario = scenario_from_raw(apply_overrides(raw, list(params.items())), file)
    result = run(scenario, replications=reps, seed=seed, workers=workers)
    rm = metrics.round_metrics(result.frames["units"], result.frames["bids"])

    def check(loro: list[dict], stat: str) -> tuple[float, list[dict]]:
        draws = {r["round"]: rm.loc[rm["round"] == r["round"], stat].to_numpy() for r in loro}
        rows = predictive.loro_coverage(loro, draws, seed=seed)
        sd = predictive.structural_sd([r["predicted"] - r["published"] for r in rows],
                                      [r["replication_sd"] for r in rows])
        return sd, [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]

    sd, rows = check(drug.loro, "avg_cut")
    doc = {"avg_cut_sd": round(sd, 4), "replications": reps, "seed": seed,
           "method": "sqrt(max(0, mean(e^2 - s^2))): leave-one-round-out residuals e of the drug average "
                     "cuts, less each round's replication variance s^2 at the calibrated parameters",
           "covered": sum(r["covered"] for r in rows), "rounds_checked": len(rows), "rounds": rows}
    if drug.loro_share:
        sd, rows = check(drug.loro_share, "winner_share")
        doc["winner_share"] = {"sd": round(sd, 4), "covered": sum(r["covered"] for r in rows),
                               "rounds_checked": len(rows), "rounds": rows}
    savings = savings_error(rm, [r["round"] for r in drug.loro], seed=seed)
    if savings is not None:
        doc["annual_savings"] = savings
    return doc


def savings_groups(rounds: list[str]) -> list[dict]:
    """The published first-year savings of these rounds, alone or in groups (targets.toml): each
    with its rounds, savings (CNY bn) and molecule-weighted published cut. Groups need every one
    of their rounds among `rounds` and a published cut and molecule count for each."""
    table = data.read_toml("targets.toml")
    pub = table["rounds"]
    groups = [{"name": r, "rounds": [r], "value": pub[r]["annual_savings_bn"]}
              for r in rounds if "annual_savings_bn" in pub.get(r, {})]
    groups += [{"name": g["name"], "rounds": list(g["rounds"]), "value": g["value"]}
               for g in table.get("annual_savings_groups", []) if set(g["rounds"]) <= set(rounds)]
    out = []
    for g in groups:
        have = [pub.get(r, {}) for r in g["rounds"]]
        if not all("avg_cut" in t and "products_won" in t for t in have):
            continue
        n = np.array([t["products_won"] for t in have], dtype=float)
        cut = float(np.dot([t["avg_cut"] for t in have], n) / n.sum())
        out.append({**g, "value": float(g["value"]), "cut": cut})
    return out


def savings_error(rm: pd.DataFrame, rounds: list[str], *, seed: int) -> dict | None:
    """The first-year savings' proportional error beyond the cut's, from the drug rounds' published
    savings (never moments, so these residuals are out of sample).

    Savings = cut x agreed value at the reference price, so savings / cut is the agreed value the
    round implies. Its log residual, simulated (mean over replications) less published, measures
    what the cut's error does not: market values (mostly assumptions), agreed shares, the base of
    the published figure. Its structural sd, as for the cut (`vbp.predictive`), widens a drug
    forecast's savings interval by a factor exp(N(0, sd^2)); each group's row also gives the
    interval an sd estimated without it would have had. None with fewer than two groups.
    """
    from vbp import predictive

    groups = savings_groups(rounds)
    if len(groups) < 2:
        return None
    rows, draws, shown = [], {}, {}
    for g in groups:
        sel = rm[rm["round"].isin(g["rounds"])]
        sub = sel.assign(weighted=sel["avg_cut"] * sel["procured"]).groupby("rep")
        sav = sub["annual_savings_bn"].sum()
        cut = sub["weighted"].sum() / sub["procured"].sum()  # over molecules, as the published cut
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log((sav / cut).to_numpy(float))
        x = x[np.isfinite(x)]  # a replication that procured none of the group's molecules has no ratio
        draws[g["name"]] = x
        rows.append({"round": g["name"], "published": float(np.log(g["value"] / g["cut"])),
                     "predicted": float(x.mean())})
        shown[g["name"]] = {"rounds": g["rounds"], "published_bn": g["value"], "simulated_bn": float(sav.mean()),
                            "published_cut": g["cut"], "simulated_cut": float(cut.mean())}
    cover = predictive.loro_coverage(rows, draws, seed=seed)
    sd = predictive.structural_sd([r["predicted"] - r["published"] for r in cover],
                                  [r["replication_sd"] for r in cover])
    out = []
    for r in cover:
        row = {"group": r["round"], **shown[r["round"]], "log_error": r["predicted"] - r["published"],
               "replication_sd": r["replication_sd"], "sd_without_group": r["structural_sd_without_round"],
               "covered": r["covered"]}
        out.append({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return {"log_sd": round(sd, 4), "method": "sqrt(max(0, mean(e^2 - s^2))) over the log residuals e of "
            "savings / cut (simulated mean less published) of the drug rounds with published first-year "
            "savings, less each one's replication variance s^2", "covered": sum(r["covered"] for r in out),
            "groups_checked": len(out), "groups": out}
