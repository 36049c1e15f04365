"""Winner determination and province allocation: the optimizer, and the only PuLP importer.

Rules mode: the rulebook has chosen the winners of a molecule; every province gets exactly one
primary supplier at minimum procurement cost (``allocate``). Planner mode: the optimizer chooses
the winners too, under supply-security constraints (``plan``). The gap between the two is a
research output.

Most rules-mode instances never reach the solver: one winner is trivial, and otherwise the
uncapacitated problem is solved exactly as a linear assignment; only when that solution breaks a
capacity does the MILP run. Every MILP is solved by HiGHS in-process, single-threaded and seeded,
and anything short of proven optimality raises ``AllocationError``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pulp
from scipy.optimize import linear_sum_assignment

__all__ = [
    "draft",
    "AllocationProblem",
    "Allocation",
    "AllocationError",
    "PlannerProblem",
    "allocate",
    "build_allocation_model",
    "solve_allocation_milp",
    "build_planner_model",
    "plan",
    "backup_coverable",
]

#: Relative slack allowed on capacity when checking a solution (absorbs float sums).
_CAP_RTOL = 1e-9
#: Relative MIP gap at which HiGHS may stop and call a solution optimal (its default is 1e-4).
#: 1e-6 is under one yuan per million; proving 1e-9 on knapsack-like instances where capacity
#: binds took 25 s where 1e-6 took 0.1 s.
MIP_REL_GAP = 1e-6

#: Default wall-clock limit per solve, s (the scenario's `optimizer.time_limit` has the same
#: default): a guard against a solve that never ends, not a setting of the answer.
TIME_LIMIT = 60.0


class AllocationError(RuntimeError):
    """An allocation could not be proven optimal: infeasible, failed or time-limited solve."""


def _array(value, label: str, name: str, ndim: int) -> np.ndarray:
    """Return ``value`` as a read-only float array of ``ndim`` dimensions, or raise ValueError."""
    arr = np.array(value, dtype=float)
    if arr.ndim != ndim:
        raise ValueError(f"{label or 'problem'}: {name} must be {ndim}-D, got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _coerce(obj, vectors: tuple[str, ...]) -> None:
    """Replace a frozen problem's array fields by read-only float arrays (logistics 2-D)."""
    for name in vectors:
        object.__setattr__(obj, name, _array(getattr(obj, name), obj.label, name, 1))
    if obj.logistics is not None:
        object.__setattr__(obj, "logistics", _array(obj.logistics, obj.label, "logistics", 2))


def _check_inputs(label: str, unit: np.ndarray, unit_name: str, demand: np.ndarray,
                  capacity: np.ndarray, logistics: np.ndarray | None) -> None:
    """Raise ValueError on shapes that disagree or values that are not prices/volumes."""
    where = label or "problem"
    k, n_prov = unit.shape[0], demand.shape[0]
    if capacity.shape != (k,):
        raise ValueError(f"{where}: capacity shape {capacity.shape} != {unit_name} shape {(k,)}")
    if logistics is not None and logistics.shape != (k, n_prov):
        raise ValueError(f"{where}: logistics shape {logistics.shape} != {(k, n_prov)}")
    if not np.all(np.isfinite(unit)) or np.any(unit < 0):
        raise ValueError(f"{where}: {unit_name} must be finite and >= 0, got {unit}")
    if not np.all(np.isfinite(demand)) or np.any(demand < 0):
        raise ValueError(f"{where}: demand must be finite and >= 0, got {demand}")
    if np.any(np.isnan(capacity)) or np.any(capacity < 0):
        raise ValueError(f"{where}: capacity must be >= 0 (inf allowed), got {capacity}")
    if logistics is not None and not np.all(np.isfinite(logistics)):
        raise ValueError(f"{where}: logistics must be finite")


@dataclass(frozen=True)
class AllocationProblem:
    """Provinces to allocate among the winners of one molecule (rules mode).

    Fields: ``price`` (k,) award price of each winner, yuan per unit; ``demand`` (P,) agreed
    volume of each province, units >= 0; ``capacity`` (k,) most units each winner can supply in
    the contract year (inf allowed); ``logistics`` (k, P) extra yuan per unit for winner i to
    serve province p, None = 0; ``label`` names the instance in error messages.
    """

    price: np.ndarray
    demand: np.ndarray
    capacity: np.ndarray
    logistics: np.ndarray | None = None
    label: str = ""

    def __post_init__(self) -> None:
        _coerce(self, ("price", "demand", "capacity"))
        _check_inputs(self.label, self.price, "price", self.demand, self.capacity,
                      self.logistics)

    def unit_cost(self) -> np.ndarray:
        """(k, P) yuan per unit for winner i to supply province p: price plus logistics."""
        cost = np.repeat(self.price[:, None], self.demand.shape[0], axis=1)
        return cost if self.logistics is None else cost + self.logistics

    def cost(self) -> np.ndarray:
        """(k, P) yuan for winner i to supply all of province p's demand."""
        return self.unit_cost() * self.demand[None, :]


@dataclass(frozen=True)
class Allocation:
    """An optimal allocation: ``supplier`` (P,) winner index per province; ``volume`` (k,) units
    per winner; ``objective`` total yuan incl. logistics; ``status`` is always "optimal" (anything
    else raises); ``method`` "trivial" | "assignment" | "milp"; ``solve_s`` build + solve wall s."""

    supplier: np.ndarray
    volume: np.ndarray
    objective: float
    status: str
    method: str
    solve_s: float


def _fail(label: str, status: str, reason: str) -> AllocationError:
    """Build the one error format: label, solver status and reason."""
    return AllocationError(f"{label or 'allocation'}: status {status!r}: {reason}")


def _result(problem: AllocationProblem, supplier: np.ndarray, method: str,
            start: float) -> Allocation:
    """Package a supplier array as an Allocation, recomputing volume and cost from the data."""
    supplier = np.asarray(supplier, dtype=np.intp)
    k, n_prov = problem.price.shape[0], problem.demand.shape[0]
    volume = np.bincount(supplier, weights=problem.demand, minlength=k).astype(float)
    objective = float(problem.cost()[supplier, np.arange(n_prov)].sum())
    return Allocation(supplier, volume, objective, "optimal", method, time.perf_counter() - start)


def _within_capacity(volume: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Elementwise volume <= capacity, up to a relative slack that absorbs float sums."""
    return volume <= capacity + _CAP_RTOL * np.maximum(1.0, np.nan_to_num(capacity, posinf=0.0))


def _infeasibility(problem: AllocationProblem) -> str | None:
    """A reason the instance is infeasible by counting alone, or None if no cheap test fails."""
    k, n_prov = problem.price.shape[0], problem.demand.shape[0]
    total = problem.demand.sum()
    if k == 0:
        return "infeasible: no winners to supply the provinces"
    if k > n_prov:
        return f"infeasible: {k} winners but only {n_prov} provinces (each winner needs one)"
    if not _within_capacity(np.array([total]), np.array([problem.capacity.sum()]))[0]:
        return (f"infeasible: total capacity {problem.capacity.sum():g} below total demand "
                f"{total:g}")
    return None


@functools.cache
def _silence_highs_banner() -> None:
    """Construct one HiGHS object with file descriptor 1 sent to the null device.

    HiGHS writes its copyright banner to C stdout when the first solver object of a process is
    built, before any option can turn output off; that line would corrupt machine-readable
    stdout (``--json``) in the main process and in every worker. Later objects stay quiet.
    """
    import highspy

    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable stdout: nothing to protect
        highspy.Highs()
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        highspy.Highs()
        try:
            ctypes.CDLL(None).fflush(None)  # flush C stdio before stdout is restored
        except (OSError, TypeError, AttributeError):
            pass
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _solve_highs(model: pulp.LpProblem, label: str, time_limit: float) -> None:
    """Solve ``model`` with in-process HiGHS; raise AllocationError unless proven optimal.

    PuLP maps a time-limited HiGHS run to status "Optimal", so the raw HiGHS model status is
    read instead; only kOptimal (gap <= ``MIP_REL_GAP``) is accepted.
    """
    _silence_highs_banner()
    # tight feasibility tolerances: with HiGHS's defaults a near-binary x rounded to 1 can push a
    # capacity or share row past its bound by ~1e-6, which the solution check rightly rejects.
    # Presolve off: with these tolerances HiGHS 1.16's presolve can loop on some planner models
    # without checking the time limit; the models are small and solve in milliseconds without it.
    solver = pulp.HiGHS(msg=False, threads=1, timeLimit=time_limit, gapRel=MIP_REL_GAP,
                        random_seed=0, mip_feasibility_tolerance=1e-9, primal_feasibility_tolerance=1e-9,
                        presolve="off")
    try:
        model.solve(solver)
    except pulp.PulpSolverError as exc:
        raise _fail(label, "error", f"solver failed: {exc}") from exc
    highs = model.solverModel
    status = highs.getModelStatus()
    name = highs.modelStatusToString(status)
    kinds = type(status)
    if status == kinds.kOptimal:
        return
    if status in (kinds.kInfeasible, kinds.kUnboundedOrInfeasible):
        reason = "infeasible: HiGHS proved no allocation meets every constraint"
    elif status == kinds.kTimeLimit:
        reason = f"time limit of {time_limit:g} s reached without proof of optimality"
    else:
        reason = "solve failed without an optimal solution"
    raise _fail(label, name, reason)


def _binary(model: pulp.LpProblem, name: str) -> pulp.LpVariable:
    """A binary variable owned by ``model`` (PuLP >= 3.3 API, with the older constructor)."""
    if hasattr(model, "add_variable"):
        return model.add_variable(name, cat=pulp.LpBinary)
    return pulp.LpVariable(name, cat=pulp.LpBinary)


def _supplier_from(x: dict, k: int, n_prov: int, label: str) -> np.ndarray:
    """Read the (P,) supplier array off binary values x[i, p], checking one supplier each."""
    values = np.array([[x[i, p].varValue or 0.0 for p in range(n_prov)] for i in range(k)])
    chosen = values > 0.5
    if not np.all(chosen.sum(axis=0) == 1):
        raise _fail(label, "optimal", "solver returned a province without exactly one supplier")
    return np.argmax(chosen, axis=0)


def build_allocation_model(problem: AllocationProblem) -> tuple[pulp.LpProblem, dict]:
    """Build the rules-mode MILP; return the model and its binaries ``x[(i, p)]``.

    x[i, p] = 1 iff winner i is the primary supplier of province p.
    """
    k, n_prov = problem.price.shape[0], problem.demand.shape[0]
    cost = problem.cost()
    model = pulp.LpProblem("province_allocation", pulp.LpMinimize)
    x = {(i, p): _binary(model, f"x_{i}_{p}") for i in range(k) for p in range(n_prov)}

    # min sum_{i,p} (price[i] + logistics[i,p]) * demand[p] * x[i,p]
    model += pulp.lpSum(float(cost[i, p]) * x[i, p] for i in range(k) for p in range(n_prov))

    # sum_i x[i,p] = 1 for every province p: exactly one primary supplier
    for p in range(n_prov):
        model += pulp.lpSum(x[i, p] for i in range(k)) == 1, f"one_supplier_{p}"

    # sum_p x[i,p] >= 1 for every winner i: each winner supplies at least one province
    for i in range(k):
        model += pulp.lpSum(x[i, p] for p in range(n_prov)) >= 1, f"winner_supplies_{i}"

    # sum_p demand[p] * x[i,p] <= capacity[i]; rows for infinite capacity are omitted; in shares
    # of total demand for numerics (volumes reach 1e9 units)
    total = max(float(problem.demand.sum()), 1e-300)
    for i in range(k):
        if np.isfinite(problem.capacity[i]):
            model += (pulp.lpSum(float(problem.demand[p] / total) * x[i, p] for p in range(n_prov))
                      <= float(problem.capacity[i] / total), f"capacity_{i}")
    return model, x


def solve_allocation_milp(problem: AllocationProblem, *, time_limit: float = TIME_LIMIT) -> Allocation:
    """Allocate provinces by the MILP (HiGHS); raise AllocationError unless proven optimal."""
    start = time.perf_counter()
    reason = _infeasibility(problem)
    if reason is not None:
        raise _fail(problem.label, "not solved", reason)
    k, n_prov = problem.price.shape[0], problem.demand.shape[0]
    model, x = build_allocation_model(problem)
    _solve_highs(model, problem.label, time_limit)
    supplier = _supplier_from(x, k, n_prov, problem.label)
    result = _result(problem, supplier, "milp", start)
    if not np.all(_within_capacity(result.volume, problem.capacity)):
        raise _fail(problem.label, "optimal", "solver returned a solution over capacity")
    return result


def _assignment_supplier(cost: np.ndarray) -> np.ndarray:
    """Exact optimum of the uncapacitated problem: each winner >= 1 province, min total cost.

    With m[p] = min_i c[i,p] and extra cost e[i,p] = c[i,p] - m[p] >= 0, the cost of an onto
    map s (province -> winner) is sum_p m[p] + sum_p e[s(p), p]. Claim: the least extra cost
    over onto maps equals the least sum_i e[i, phi(i)] over injective maps phi (winner ->
    province). (>=) From an onto s pick one province phi(i) in each s^-1(i); these are distinct,
    and dropping the other terms, all >= 0, cannot raise the sum. (<=) From phi set s(phi(i)) = i
    and send every other province to a cheapest winner, adding zero extra cost; s is onto. So
    solving the k x P assignment on e, then filling the rest by argmin, is exact. Ties go to the
    lowest index (argmin) and to SciPy's deterministic assignment.
    """
    extra = cost - cost.min(axis=0, keepdims=True)
    supplier = np.argmin(cost, axis=0)
    rows, cols = linear_sum_assignment(extra)
    supplier[cols] = rows
    return supplier


def allocate(problem: AllocationProblem, *, method: str = "auto",
             time_limit: float = TIME_LIMIT) -> Allocation:
    """Allocate every province to one winner at minimum cost; exact on every path.

    ``method="auto"``: one winner is trivial; otherwise solve the uncapacitated relaxation as a
    linear assignment (see ``_assignment_supplier``) and return it if it respects every
    capacity (a relaxation's optimum that is feasible is optimal); else run the MILP.
    ``method="milp"`` always runs the MILP. Raises AllocationError when infeasible.
    """
    if method == "milp":
        return solve_allocation_milp(problem, time_limit=time_limit)
    if method == "draft":
        return draft(problem)
    if method != "auto":
        raise ValueError(f"method must be 'auto', 'milp' or 'draft', got {method!r}")
    start = time.perf_counter()
    reason = _infeasibility(problem)
    if reason is not None:
        raise _fail(problem.label, "not solved", reason)
    n_prov = problem.demand.shape[0]
    if problem.price.shape[0] == 1:
        # _infeasibility has already checked the single winner's capacity against demand
        return _result(problem, np.zeros(n_prov, dtype=np.intp), "trivial", start)
    result = _result(problem, _assignment_supplier(problem.cost()), "assignment", start)
    if np.all(_within_capacity(result.volume, problem.capacity)):
        return result
    return solve_allocation_milp(problem, time_limit=time_limit)


def draft(problem: AllocationProblem) -> Allocation:
    """The rulebook's own allocation, no optimizer: winners pick in price order, one province
    per turn, each taking the largest remaining province (batch 7 description, vbp_facts 2.4).

    Capacity is ignored; this is the floor an optimizer adds its cost to (benchmarks).
    """
    start = time.perf_counter()
    k, n_prov = problem.price.shape[0], problem.demand.shape[0]
    order = np.argsort(problem.price, kind="stable")
    provinces = np.argsort(-problem.demand, kind="stable")
    supplier = order[np.arange(n_prov) % k][np.argsort(provinces, kind="stable")]
    return _result(problem, supplier.astype(np.intp), "draft", start)


@dataclass(frozen=True)
class PlannerProblem:
    """All valid bids of one molecule, from which the planner chooses winners and allocation.

    Fields: ``bid`` (n,) yuan per unit; ``eligible`` (n,) bool, bids the planner may choose;
    ``demand`` (P,) units; ``capacity`` (n,) units (inf allowed); ``logistics`` (n, P) extra yuan
    per unit, None = 0; ``max_winners`` and ``min_suppliers`` bound the number of winners;
    ``max_share`` in [0, 1] caps each winner's share of total demand; ``backup`` asks for N-1
    security: if any one winner fails, the others' capacity still covers the whole demand (each
    province then has a backup with room to take it over); ``label`` for errors.
    """

    bid: np.ndarray
    eligible: np.ndarray
    demand: np.ndarray
    capacity: np.ndarray
    logistics: np.ndarray | None = None
    max_winners: int = 10
    min_suppliers: int = 1
    max_share: float = 1.0
    label: str = ""
    backup: bool = False

    def __post_init__(self) -> None:
        _coerce(self, ("bid", "demand", "capacity"))
        eligible = np.array(self.eligible, dtype=bool)
        eligible.setflags(write=False)
        object.__setattr__(self, "eligible", eligible)
        _check_inputs(self.label, self.bid, "bid", self.demand, self.capacity, self.logistics)
        where = self.label or "problem"
        if eligible.shape != self.bid.shape:
            raise ValueError(f"{where}: eligible shape {eligible.shape} != bid shape")
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError(f"{where}: max_share must be in [0, 1], got {self.max_share}")
        if self.max_winners < 0 or self.min_suppliers < 0:
            raise ValueError(f"{where}: max_winners and min_suppliers must be >= 0")

    def bound(self) -> np.ndarray:
        """(n,) most units each bidder may supply: min(capacity, max_share * total demand)."""
        return np.minimum(self.capacity, self.max_share * self.demand.sum())

    def as_allocation(self, won: np.ndarray) -> AllocationProblem:
        """The rules-mode problem over the bidders in ``won``, capacity capped by max share."""
        logistics = None if self.logistics is None else self.logistics[won]
        return AllocationProblem(self.bid[won], self.demand, self.bound()[won], logistics,
                                 self.label)


def _planner_infeasibility(problem: PlannerProblem) -> str | None:
    """A reason the planner instance is infeasible by counting alone, or None."""
    n_elig, n_prov = int(problem.eligible.sum()), problem.demand.shape[0]
    if n_prov == 0:
        return "infeasible: no provinces to allocate"
    most = min(n_elig, problem.max_winners, n_prov)
    if problem.min_suppliers > most:
        return (f"infeasible: min_suppliers {problem.min_suppliers} exceeds what can win "
                f"({n_elig} eligible, max_winners {problem.max_winners}, {n_prov} provinces)")
    if most == 0:
        return "infeasible: no eligible bidder may win"
    top = np.sort(problem.bound()[problem.eligible])[::-1][:most].sum()
    if not _within_capacity(np.array([problem.demand.sum()]), np.array([top]))[0]:
        return f"infeasible: the largest allowed winners can supply {top:g} < demand"
    if problem.backup and not backup_coverable(problem.capacity[problem.eligible], problem.demand.sum(), most):
        return "infeasible: no set of winners keeps the demand covered when its largest member fails"
    return None


def backup_coverable(capacity: np.ndarray, demand: float, most: int | None = None) -> bool:
    """Whether some set of at most `most` bidders keeps `demand` covered when any one of them fails
    (N-1): the largest capacities but the top one must cover it."""
    caps = np.sort(np.asarray(capacity, dtype=float))[::-1][:most]
    if len(caps) and demand <= 0:
        return True  # nothing to cover: one winner is enough
    return len(caps) >= 2 and bool(_within_capacity(np.array([demand]), np.array([caps[1:].sum()]))[0])


def build_planner_model(problem: PlannerProblem) -> tuple[pulp.LpProblem, dict, dict]:
    """Build the planner MILP; return the model, ``y[i]`` (i wins) and ``x[(i, p)]``.

    Only eligible bidders get variables, which fixes y[i] = 0 for the others.
    """
    bidders = [int(i) for i in np.flatnonzero(problem.eligible)]
    n_prov = problem.demand.shape[0]
    alloc = AllocationProblem(problem.bid, problem.demand, problem.capacity, problem.logistics)
    cost, bound = alloc.cost(), problem.bound()
    model = pulp.LpProblem("winner_determination", pulp.LpMinimize)
    y = {i: _binary(model, f"y_{i}") for i in bidders}
    x = {(i, p): _binary(model, f"x_{i}_{p}") for i in bidders for p in range(n_prov)}

    # min sum_{i,p} (bid[i] + logistics[i,p]) * demand[p] * x[i,p]
    model += pulp.lpSum(float(cost[i, p]) * x[i, p] for i in bidders for p in range(n_prov))

    # sum_i x[i,p] = 1 for every province p: exactly one primary supplier
    for p in range(n_prov):
        model += pulp.lpSum(x[i, p] for i in bidders) == 1, f"one_supplier_{p}"

    # x[i,p] <= y[i]: only winners supply
    for i, p in x:
        model += x[i, p] <= y[i], f"only_winners_{i}_{p}"

    # sum_p x[i,p] >= y[i]: each winner supplies at least one province
    for i in bidders:
        model += pulp.lpSum(x[i, p] for p in range(n_prov)) >= y[i], f"winner_supplies_{i}"

    # min_suppliers <= sum_i y[i] <= max_winners: supply security and the rulebook's cap
    model += pulp.lpSum(y.values()) <= problem.max_winners, "max_winners"
    model += pulp.lpSum(y.values()) >= problem.min_suppliers, "min_suppliers"

    # sum_p demand[p] x[i,p] <= min(capacity[i], max_share * total demand) * y[i], written in shares
    # of total demand (volumes reach 1e9 units; a bound equal to the total would otherwise fail on
    # rounding) with the same relative slack the solution check allows
    total = max(float(problem.demand.sum()), 1e-300)
    for i in bidders:
        if np.isfinite(bound[i]):
            model += (pulp.lpSum(float(problem.demand[p] / total) * x[i, p] for p in range(n_prov))
                      <= float(bound[i] / total) * (1.0 + _CAP_RTOL) * y[i], f"capacity_share_{i}")

    # backup coverage (N-1): for every bidder j, sum_{i != j} capacity[i] y[i] >= total demand, so
    # whichever winner fails, the others can take over all of its provinces (no demand: nothing to cover)
    if problem.backup and problem.demand.sum() > 0:
        cap = {i: float(min(problem.capacity[i], 1e3 * total) / total) for i in bidders}
        for j in bidders:
            model += (pulp.lpSum(cap[i] * y[i] for i in bidders if i != j) >= 1.0, f"backup_{j}")
    return model, y, x


def plan(problem: PlannerProblem, *, time_limit: float = TIME_LIMIT) -> tuple[np.ndarray, Allocation]:
    """Choose winners and allocation jointly at minimum cost (planner mode, always the MILP).

    Returns the (n,) won mask and the Allocation over the winners in index order (``supplier``
    indexes ``np.flatnonzero(won)``). Raises AllocationError if infeasible or not proven optimal.
    """
    start = time.perf_counter()
    reason = _planner_infeasibility(problem)
    if reason is not None:
        raise _fail(problem.label, "not solved", reason)
    model, y, x = build_planner_model(problem)
    _solve_highs(model, problem.label, time_limit)
    won = np.zeros(problem.bid.shape[0], dtype=bool)
    won[[i for i, var in y.items() if (var.varValue or 0.0) > 0.5]] = True
    winners = np.flatnonzero(won)
    n_prov = problem.demand.shape[0]
    x_won = {(j, p): x[i, p] for j, i in enumerate(winners) for p in range(n_prov)}
    supplier = _supplier_from(x_won, winners.shape[0], n_prov, problem.label)
    alloc_problem = problem.as_allocation(won)
    result = _result(alloc_problem, supplier, "milp", start)
    if (np.bincount(supplier, minlength=winners.shape[0]) == 0).any() or not np.all(
            _within_capacity(result.volume, alloc_problem.capacity)):
        raise _fail(problem.label, "optimal", "solver returned a solution breaking a constraint")
    return won, result
