"""Sweeps: many scenarios from one spec file, run as (design point, replication) tasks.

A spec names a scenario, replications, a root seed, a design (grid, random, Latin hypercube, Sobol
or counterfactual) and parameters by dotted path into the scenario. Replication r of every point
runs `run_replication(point_scenario, spec.seed, r)`: the same random draws at every point (common
random numbers), whatever the executor or worker count. Each task's metrics go to the SQLite store
as it finishes; the tidy tables are exported from the store at the end, and after Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from vbp import counterfactual as cf
from vbp.errors import InputError, SimulationError, did_you_mean
from vbp.output import atomic_frame
from vbp.scenario import (
    AgentParams,
    DynamicsParams,
    MarketParams,
    OptimizerParams,
    Round,
    RuleOverrides,
    Scenario,
    apply_overrides,
    flatten,
    load_raw,
    parse_override,
    read_toml_file,
    scenario_from_raw,
)
from vbp.store import Store, TaskRow

__all__ = ["DESIGNS", "HEADLINE", "DYNAMICS", "ROUND_STATS", "Range", "SweepSpec", "Point", "Plan", "SweepResult",
           "load_spec", "parse_spec", "plan_sweep", "metric_names", "task_metrics", "run_task",
           "run_sweep", "results_table", "sobol_table", "sweep_command"]

DESIGNS = ("grid", "random", "lhs", "sobol", "counterfactual")
HEADLINE = ("drug_avg_cut", "joint_avg_cut", "stent_avg_cut", "cumulative_savings_2021_bn")
ROUND_STATS = ("avg_cut", "annual_savings_bn", "winning_products", "winner_share")
DYNAMICS = ("drug_shortage_share", "drug_shortage_days", "drug_backup_share", "drug_hhi", "drug_top_share",
            "drug_exits", "drug_entrants", "drug_renewal_price_change")
SOBOL_COLUMNS = ["metric", "parameter", "S1", "S1_conf", "ST", "ST_conf"]
MAX_TASKS = 1_000_000
_TOP = ("name", "description", "scenario", "replications", "seed", "design", "parameters", "fixed")
_DESIGN_KEYS = ("kind", "samples", "seed", "variants")


@dataclass(frozen=True)
class Range:
    """A sampled parameter's bounds (random, lhs and sobol designs); low < high."""

    low: float
    high: float


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep spec (before the scenario is loaded)."""

    file: str  # the spec file, for messages
    scenario: str  # embedded name, or a path relative to the spec's folder
    replications: int
    seed: int  # root seed: replication r of every point uses (seed, r)
    kind: str  # one of DESIGNS
    samples: int | None  # random/lhs: points; sobol: base N (points = N x (parameters + 2))
    design_seed: int  # seed of the design's own sampling
    parameters: tuple[tuple[str, tuple | Range], ...]  # (dotted path, grid values or Range)
    variants: tuple[str, ...] = ()  # counterfactual variants (the baseline is always point 0)
    fixed: tuple[tuple[str, Any], ...] = ()  # overrides held at every point
    name: str = ""
    description: str = ""
    base_dir: str = "."  # folder of the spec file (not part of the hash)

    def as_dict(self) -> dict:
        """The spec as parsed, in plain data (what the manifest records and the hash covers)."""
        params = {p: ({"low": v.low, "high": v.high} if isinstance(v, Range) else list(v))
                  for p, v in self.parameters}
        design = {"kind": self.kind, "samples": self.samples, "seed": self.design_seed}
        if self.kind == "counterfactual":
            design["variants"] = list(self.variants)
        return {"name": self.name, "description": self.description, "scenario": self.scenario,
                "replications": self.replications, "seed": self.seed, "design": design,
                "parameters": params, "fixed": dict(self.fixed)}

    def digest(self) -> str:
        """sha256 of the canonical JSON of `as_dict()`."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def scenario_ref(self) -> str:
        """The scenario argument for `load_raw`: the embedded name, or the path from the spec's folder."""
        from vbp.data import embedded_scenarios

        if self.scenario in embedded_scenarios():
            return self.scenario
        path = Path(self.scenario)
        return str(path if path.is_absolute() else Path(self.base_dir) / path)


# ---------------------------------------------------------------------------------------------
# Spec parsing


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and validate a spec file; `overrides` ('PATH=VALUE') join its [fixed] table."""
    p = Path(path)
    doc = read_toml_file(p)
    return parse_spec(doc, str(path), base_dir=str(p.parent), overrides=overrides)


def _check_keys(table: dict, allowed: Sequence[str], file: str, prefix: str = "") -> None:
    for key in table:
        if key not in allowed:
            raise InputError(f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}",
                             file=file, field=prefix + key)


def _int(value: Any, file: str, fld: str, low: int, high: int = 2**32 - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"expected a whole number, got {value!r}", file=file, field=fld, value=value)
    if not low <= value <= high:
        raise InputError(f"must be between {low} and {high}, got {value}", file=file, field=fld, value=value)
    return value


def _table(value: Any, file: str, fld: str) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"expected a table, got {value!r}", file=file, field=fld, value=value)
    return value


def _leaves(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Dotted paths of a (possibly nested) table; a {low, high} table is a leaf (a range)."""
    out: list[tuple[str, Any]] = []
    for k, v in table.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and not {"low", "high"} & set(v):
            out.extend(_leaves(v, path))
        else:
            out.append((path, v))
    return out


def _range(value: Any, file: str, fld: str) -> Range:
    if not isinstance(value, dict):
        raise InputError(f"expected a range {{low = ..., high = ...}}, got {value!r}", file=file, field=fld,
                         value=value)
    _check_keys(value, ("low", "high"), file, fld + ".")
    for k in ("low", "high"):
        v = value.get(k)
        if v is None:
            raise InputError(f"missing required field {k!r}", file=file, field=f"{fld}.{k}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"expected a finite number, got {v!r}", file=file, field=f"{fld}.{k}", value=v)
    if not value["low"] < value["high"]:
        raise InputError(f"low ({value['low']}) must be less than high ({value['high']})", file=file,
                         field=fld, value=value)
    return Range(float(value["low"]), float(value["high"]))


def parse_spec(doc: dict, file: str, *, base_dir: str = ".", overrides: Sequence[str] = ()) -> SweepSpec:
    """Validate a spec document; every problem is an InputError naming the file and the field."""
    _check_keys(doc, _TOP, file)
    for key in ("scenario", "replications", "design"):
        if key not in doc:
            raise InputError("missing required field", file=file, field=key)
    scenario = doc["scenario"]
    if not isinstance(scenario, str) or not scenario.strip():
        raise InputError(f"expected a scenario name or path, got {scenario!r}", file=file, field="scenario",
                         value=scenario)
    for key in ("name", "description"):
        if not isinstance(doc.get(key, ""), str):
            raise InputError(f"expected text, got {doc[key]!r}", file=file, field=key, value=doc[key])
    reps = _int(doc["replications"], file, "replications", 1, 100_000)
    seed = _int(doc.get("seed", 20181206), file, "seed", 0)
    design = _table(doc["design"], file, "design")
    _check_keys(design, _DESIGN_KEYS, file, "design.")
    kind = design.get("kind")
    if kind is None:
        raise InputError(f"missing required field; one of {', '.join(DESIGNS)}", file=file,
                         field="design.kind")
    if kind not in DESIGNS:
        raise InputError(f"unknown design{did_you_mean(str(kind), DESIGNS)}; one of {', '.join(DESIGNS)}",
                         file=file, field="design.kind", value=kind)
    samples = None
    if kind in ("random", "lhs", "sobol"):
        if "samples" not in design:
            raise InputError(f"missing required field for a {kind} design", file=file, field="design.samples")
        samples = _int(design["samples"], file, "design.samples", 1, MAX_TASKS)
        if kind == "sobol" and samples & (samples - 1):
            raise InputError(f"Saltelli sampling needs a power of 2 (e.g. {1 << samples.bit_length()}), "
                             f"got {samples}", file=file, field="design.samples", value=samples)
    elif "samples" in design:
        raise InputError(f"not used by a {kind} design", file=file, field="design.samples")
    design_seed = _int(design.get("seed", seed), file, "design.seed", 0)
    params_doc = _table(doc.get("parameters", {}), file, "parameters")
    variants: tuple[str, ...] = ()
    if kind == "counterfactual":
        if params_doc:
            raise InputError("a counterfactual design takes variants, not parameters (use [fixed] to hold "
                             "values)", file=file, field="parameters")
        variants = _variants(design.get("variants"), file)
    elif "variants" in design:
        raise InputError(f"only a counterfactual design takes variants, not a {kind} design", file=file,
                         field="design.variants")
    elif not params_doc:
        raise InputError(f"missing required field: a {kind} design needs at least one parameter", file=file,
                         field="parameters")
    parameters = []
    for path, value in _leaves(params_doc):
        fld = f"parameters.{path}"
        if any(path == p for p, _ in parameters):
            raise InputError("parameter listed twice (quoted and as nested keys?)", file=file, field=fld)
        if kind == "grid":
            if not isinstance(value, list) or not value:
                raise InputError(f"a grid needs a non-empty list of values, got {value!r}", file=file,
                                 field=fld, value=value)
            parameters.append((path, tuple(value)))
        else:
            parameters.append((path, _range(value, file, fld)))
    fixed = dict(_leaves(_table(doc.get("fixed", {}), file, "fixed")))
    swept = {p for p, _ in parameters}
    if both := sorted(swept & set(fixed)):
        raise InputError("a swept parameter cannot also be held fixed; remove it from one of the two",
                         file=file, field=f"fixed.{both[0]}", value=fixed[both[0]])
    for path, value in (parse_override(o) for o in overrides):
        if path in swept:
            raise InputError(f"{path} is swept by this spec, so it cannot be set", field="--set",
                             value=f"{path}={value}")
        fixed[path] = value
    spec = SweepSpec(file=file, scenario=scenario, replications=reps, seed=seed, kind=kind, samples=samples,
                     design_seed=design_seed, parameters=tuple(parameters), variants=variants,
                     fixed=tuple(fixed.items()), name=doc.get("name", ""),
                     description=doc.get("description", ""), base_dir=base_dir)
    n_points = _n_points(spec)
    if n_points * reps > MAX_TASKS:
        raise InputError(f"{n_points} points x {reps} replications is more than {MAX_TASKS} tasks", file=file,
                         field="design")
    return spec


def _variants(value: Any, file: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise InputError("a counterfactual design needs a non-empty list of variants; known: "
                         + ", ".join(cf.VARIANTS), file=file, field="design.variants", value=value)
    for v in value:
        if not isinstance(v, str) or v not in cf.VARIANTS:
            raise InputError(f"unknown variant{did_you_mean(str(v), cf.VARIANTS)}; known: "
                             + ", ".join(cf.VARIANTS), file=file, field="design.variants", value=v)
    return tuple(dict.fromkeys(value))


def _n_points(spec: SweepSpec) -> int:
    if spec.kind == "grid":
        return math.prod(len(v) for _, v in spec.parameters)
    if spec.kind == "counterfactual":
        return 1 + len(spec.variants)
    if spec.kind == "sobol":
        return spec.samples * (len(spec.parameters) + 2)
    return spec.samples


# ---------------------------------------------------------------------------------------------
# Designs


@dataclass(frozen=True)
class Point:
    """One design point: its parameter values (by column name) and the overrides that make it."""

    index: int
    values: dict[str, Any]
    overrides: tuple[tuple[str, Any], ...]


@dataclass
class Plan:
    """Everything a sweep runs: the base scenario, the points and their scenarios, the metrics."""

    spec: SweepSpec
    raw: dict  # resolved base scenario (with the fixed overrides)
    base: Scenario
    points: list[Point]
    scenarios: list[Scenario | str]  # a point whose values do not validate holds the message
    columns: list[str]  # parameter columns of the results table
    metrics: list[str]
    problem: dict | None = None  # SALib problem of a sobol design


_MODELS = {"agents": AgentParams, "market": MarketParams, "dynamics": DynamicsParams,
           "rules": RuleOverrides, "optimizer": OptimizerParams, "rounds": Round}


def _kind_of(value: Any) -> str:
    """'number', 'true/false' or 'text' (or the type's name): what a grid value must match."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return "text" if isinstance(value, str) else type(value).__name__


def _declared_type(path: str) -> type | None:
    """The one type (None aside) a scenario field's annotation allows, or None."""
    model = _MODELS.get(path.split(".")[0])
    fld = model.model_fields.get(path.split(".")[-1]) if model else None
    if fld is None:
        return None
    types = [t for t in (typing.get_args(fld.annotation) or (fld.annotation,)) if t is not type(None)]
    return types[0] if len(types) == 1 else None


def _field_kind(path: str, default: Any) -> str | None:
    """What kind of value a scenario field takes (`_kind_of`), from its default or, when it is
    unset, from its declared type; None when neither tells."""
    if default is not None:
        return _kind_of(default)
    return {bool: "true/false", int: "number", float: "number", str: "text"}.get(_declared_type(path))


def _integer_path(path: str, default: Any) -> bool:
    """Whether a scenario field holds whole numbers (sampled values are then rounded)."""
    if default is not None:
        return isinstance(default, int) and not isinstance(default, bool)
    return _declared_type(path) is int


def _unit_samples(spec: SweepSpec, problem: dict) -> np.ndarray:
    """(points, parameters) array of sampled values for random, lhs and sobol designs."""
    if spec.kind == "random":
        rng = np.random.default_rng(spec.design_seed)
        lo, hi = np.array(problem["bounds"]).T
        return lo + rng.random((spec.samples, len(lo))) * (hi - lo)
    if spec.kind == "lhs":
        from SALib.sample import latin

        return latin.sample(problem, spec.samples, seed=spec.design_seed)
    from SALib.sample import sobol

    return sobol.sample(problem, spec.samples, calc_second_order=False, seed=spec.design_seed)


def plan_sweep(spec: SweepSpec) -> Plan:
    """Load the scenario, check the parameter paths against it, and build every design point."""
    from vbp.data import embedded_scenarios

    ref = spec.scenario_ref()
    if ref not in embedded_scenarios() and not Path(ref).is_file():
        raise InputError(f"no embedded scenario or file named {spec.scenario!r} (looked for {ref}); "
                         f"embedded: {', '.join(embedded_scenarios())}", file=spec.file, field="scenario",
                         value=spec.scenario)
    raw, label = load_raw(ref)
    defaults = dict(flatten(raw))
    for section, pairs in (("fixed", spec.fixed), ("parameters", spec.parameters)):
        for path, value in pairs:
            if path not in defaults:
                raise InputError(f"no such scenario parameter{did_you_mean(path, defaults)}; "
                                 f"`vbp params {spec.scenario}` lists them", file=spec.file,
                                 field=f"{section}.{path}")
            d = defaults[path]
            numeric = isinstance(d, (int, float)) and not isinstance(d, bool)
            if isinstance(value, Range) and d is not None and not numeric:
                raise InputError(f"a range needs a numeric parameter; this one is {d!r} (use a grid)",
                                 file=spec.file, field=f"parameters.{path}")
            want = _field_kind(path, d)
            if section == "parameters" and isinstance(value, tuple) and want is not None:
                for v in value:  # grid values of the field's type
                    if _kind_of(v) != want:
                        raise InputError(f"expected {want} values, got {v!r}", file=spec.file,
                                         field=f"parameters.{path}", value=v)
    raw = apply_overrides(raw, list(spec.fixed), file=spec.file)
    base = scenario_from_raw(raw, label)
    problem = None
    paths = [p for p, _ in spec.parameters]
    if spec.kind == "counterfactual":
        columns = ["variant"]
        values = [{"variant": v} for v in (cf.BASELINE, *spec.variants)]
        overrides = [cf.variant_overrides(v["variant"], raw) for v in values]
    elif spec.kind == "grid":
        import itertools

        columns = paths
        values = [dict(zip(paths, combo)) for combo in itertools.product(*(v for _, v in spec.parameters))]
        overrides = [list(v.items()) for v in values]
    else:
        columns = paths
        problem = {"num_vars": len(paths), "names": paths,
                   "bounds": [[r.low, r.high] for _, r in spec.parameters]}
        x = _unit_samples(spec, problem)
        ints = [_integer_path(p, defaults[p]) for p in paths]
        values = [{p: (int(round(v)) if is_int else float(v)) for p, v, is_int in zip(paths, row, ints)}
                  for row in x]
        overrides = [list(v.items()) for v in values]
    points = [Point(i, v, tuple(o)) for i, (v, o) in enumerate(zip(values, overrides))]
    scenarios: list[Scenario | str] = []
    for p in points:
        try:
            point_raw = apply_overrides(raw, list(p.overrides), file=spec.file)
            scenarios.append(scenario_from_raw(point_raw, label))
        except InputError as exc:
            scenarios.append(f"invalid point: {' '.join(str(exc).split())}")
    metrics = metric_names([r.id for r in base.rounds])
    return Plan(spec, raw, base, points, scenarios, columns, metrics, problem)


def metric_names(round_ids: Sequence[str]) -> list[str]:
    """Metric columns: the headline targets, the drug rounds' market dynamics, then each round
    statistic per round."""
    return [*HEADLINE, *DYNAMICS, *(f"{stat}.{rid}" for stat in ROUND_STATS for rid in round_ids)]


# ---------------------------------------------------------------------------------------------
# Tasks


def task_metrics(rec, round_ids: Sequence[str], drug_rounds: Sequence[str] = ()) -> dict[str, float]:
    """One replication's metrics (nan where the scenario's rounds do not define one); the dynamics
    metrics are over `drug_rounds`."""
    from vbp.metrics import dynamics_metrics, headline_metrics, round_metrics
    from vbp.records import to_frames

    frames = to_frames([rec])
    head = headline_metrics(frames)
    out = {m: float(head[m].iloc[0]) if m in head and len(head) else math.nan for m in HEADLINE}
    dyn = dynamics_metrics(frames, list(drug_rounds))
    for m in DYNAMICS:
        value = dyn[m.removeprefix("drug_")].iloc[0] if len(dyn) and drug_rounds else math.nan
        out[m] = float(value)
    rm = round_metrics(frames["units"], frames["bids"]).set_index("round")
    for stat in ROUND_STATS:
        for rid in round_ids:
            out[f"{stat}.{rid}"] = float(rm.at[rid, stat]) if rid in rm.index else math.nan
    return out


def run_task(scenario: Scenario, seed: int, rep: int) -> tuple[dict[str, float], float]:
    """Run one replication and reduce it to its metrics: (metrics, wall seconds)."""
    from vbp.model import run_replication

    t0 = time.perf_counter()
    rec = run_replication(scenario, seed, rep)
    drugs = [r.id for r in scenario.rounds if r.category == "drug"]
    return task_metrics(rec, [r.id for r in scenario.rounds], drugs), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class SweepResult:
    """What a sweep did: task counts, timing, and the analysis tables it wrote."""

    out: Path
    tasks: int
    done: int
    failed: int
    skipped: int
    wall_s: float
    spec_sha256: str
    complete: bool
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def reps_per_min(self) -> float:
        return 60.0 * self.done / self.wall_s if self.wall_s > 0 else 0.0


def _check_resume(out: Path, spec: SweepSpec, plan: Plan, resume: bool) -> None:
    manifest, store = out / "manifest.json", out / "store.sqlite"
    if not resume:
        if store.exists():
            raise InputError(f"{out} holds a sweep already; add --resume to continue it, or choose "
                             "another --out", field="--out", value=str(out))
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no manifest yet (killed early): the store's own hash decides
        old = {}
    for key, new, what in (("spec_sha256", spec.digest(), "spec"),
                           ("scenario_sha256", plan.base.digest(), "scenario")):
        if old.get(key, new) != new:
            raise InputError(f"cannot resume: the {what} has changed since this sweep started "
                             f"({what} sha256 in the folder {old[key]}, now {new}); use another --out",
                             file=spec.file, field="--resume")


def run_sweep(spec: SweepSpec, out: str | Path, *, workers: int | None = None, scheduler: str | None = None,
              local_cluster: bool = False, resume: bool = False,
              progress: Callable[[int, int], None] | None = None,
              task: Callable[[Scenario, int, int], tuple[dict, float]] = run_task) -> SweepResult:
    """Run every (point, rep) not yet in the store; export the tables, also after Ctrl-C."""
    from vbp.executors import open_executor, run_tasks
    from vbp.output import prepare_out_dir

    t0 = time.perf_counter()
    plan = plan_sweep(spec)
    out = prepare_out_dir(out)
    _check_resume(out, spec, plan, resume)
    total = len(plan.points) * spec.replications
    counts = {"done": 0, "failed": 0, "skipped": 0}
    # The executor opens first: an unreachable scheduler leaves no store behind.
    with open_executor(workers, scheduler, local_cluster) as backend, Store(out / "store.sqlite") as store:
        info = {"kind": backend.name, "slots": backend.slots, "address": backend.address}
        stored = store.meta().get("spec_sha256", spec.digest())
        if stored != spec.digest():
            raise InputError(f"cannot resume: the store was written by spec sha256 {stored}, this spec is "
                             f"{spec.digest()}", file=spec.file, field="--resume")
        store.set_meta(spec_sha256=spec.digest(), scenario_sha256=plan.base.digest())
        _write_manifest(out, plan, info, counts, total, time.perf_counter() - t0, "running")
        finished = store.done()

        def record(key, result, error) -> None:
            point, rep = key
            metrics, wall = result if error is None else ({}, None)
            store.put(TaskRow(point, rep, spec.seed, "error" if error else "ok", error, metrics, wall))
            counts["failed" if error else "done"] += 1
            if progress:
                progress(sum(counts.values()), total)

        todo = []
        for rep in range(spec.replications):  # replication-major: every point gets rep 0 first
            for p in plan.points:
                if (p.index, rep) in finished:
                    counts["skipped"] += 1
                elif isinstance(plan.scenarios[p.index], str):
                    record((p.index, rep), None, plan.scenarios[p.index])
                else:
                    todo.append(((p.index, rep), (plan.scenarios[p.index], spec.seed, rep)))
        if progress:
            progress(sum(counts.values()), total)
        complete = False
        try:
            run_tasks(backend, task, todo, record)
            complete = True
        finally:
            results = results_table(store, plan)
            tables = _analyses(plan, results) if complete else {}
            _export(out, results, tables)
            wall = time.perf_counter() - t0
            _write_manifest(out, plan, info, counts, total, wall, "complete" if complete else "interrupted")
    return SweepResult(out, total, counts["done"], counts["failed"], counts["skipped"], wall, spec.digest(),
                       complete, tables)


def _column(values: list) -> list:
    """A parameter column that CSV and Parquet both hold: numbers, or text when types are mixed."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values
    if all(isinstance(v, bool) for v in values) or all(isinstance(v, str) for v in values):
        return values
    return [json.dumps(v, default=str) if not isinstance(v, str) else v for v in values]


def results_table(store: Store, plan: Plan) -> pd.DataFrame:
    """One tidy row per stored (point, rep), sorted: point, rep, seed, status, error, parameters, metrics."""
    df = store.frame(plan.metrics)
    params = pd.DataFrame({c: _column([p.values[c] for p in plan.points]) for c in plan.columns})
    params.index.name = "point"
    merged = df.join(params, on="point")
    return merged[["point", "rep", "seed", "status", "error", *plan.columns, *plan.metrics]]


def sobol_table(plan: Plan, results: pd.DataFrame) -> pd.DataFrame:
    """First- and total-order Sobol indices per metric (SALib), over replication means per point.

    Metrics that are undefined at some point, or constant over the design, have no indices.
    """
    from SALib.analyze import sobol

    ok = results[results["status"] == "ok"]
    rows = []
    for metric in plan.metrics:
        y = ok.groupby("point")[metric].mean().reindex(range(len(plan.points))).to_numpy(float)
        if not np.isfinite(y).all() or np.ptp(y) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = sobol.analyze(plan.problem, y, calc_second_order=False, seed=plan.spec.design_seed)
        for i, name in enumerate(plan.problem["names"]):
            indices = {k: float(s[k][i]) for k in SOBOL_COLUMNS[2:]}
            rows.append({"metric": metric, "parameter": name, **indices})
    return pd.DataFrame(rows, columns=SOBOL_COLUMNS)


def _analyses(plan: Plan, results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if plan.spec.kind == "counterfactual":
        return {"counterfactual": cf.paired_differences(results, plan.metrics, by="variant")}
    if plan.spec.kind == "sobol":
        return {"sobol": sobol_table(plan, results)}
    return {}


def _export(out: Path, results: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> None:
    atomic_frame(results, out / "results.csv")
    atomic_frame(results, out / "results.parquet")
    for name, df in tables.items():
        atomic_frame(df, out / f"{name}.csv")


def _write_manifest(out: Path, plan: Plan, executor: dict, counts: dict, total: int, wall: float,
                    status: str) -> None:
    from vbp.output import atomic_write_text, versions

    spec = plan.spec
    ran = counts["done"] + counts["failed"]
    doc = {
        "kind": "sweep", "status": status, "spec": spec.as_dict(), "spec_file": spec.file,
        "spec_sha256": spec.digest(), "scenario": plan.base.name, "scenario_sha256": plan.base.digest(),
        "design": {"kind": spec.kind, "samples": spec.samples, "seed": spec.design_seed,
                   "points": len(plan.points), "replications": spec.replications, "seed_root": spec.seed},
        "parameters": plan.columns, "metrics": plan.metrics,
        "versions": {**versions(), **_extra_versions()}, "executor": executor,
        "command": " ".join(["vbp", *sys.argv[1:]]),
        "timings": {"wall_s": round(wall, 3), "tasks": total, **counts,
                    "reps_per_min": round(60.0 * counts["done"] / wall, 2) if wall > 0 else 0.0,
                    "s_per_task": round(wall / ran, 4) if ran else None},
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
    }
    atomic_write_text(out / "manifest.json", json.dumps(doc, indent=2, default=str) + "\n")


def _extra_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("SALib", "distributed"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


# ---------------------------------------------------------------------------------------------
# Command line


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: _finite(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def _bar(quiet: bool):
    """A rich progress bar with ETA on stderr, or (None, None) when quiet or not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("tasks"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    tid = bar.add_task("sweep", total=None)
    return bar, lambda done, total: bar.update(tid, completed=done, total=total)


def _print_summary(result: SweepResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    for name, df in result.tables.items():
        # the market-dynamics metrics are shown where the sweep switched them on (not all zero)
        dyn = df["metric"].isin(DYNAMICS)
        active = df.loc[dyn].select_dtypes("number").fillna(0).abs().sum(axis=1) > 0
        dyn &= active.reindex(df.index, fill_value=False)
        shown = df[df["metric"].isin(HEADLINE) | dyn | df["metric"].str.startswith("avg_cut.")]
        t = Table(title=f"{name}: headline{', market dynamics' if dyn.any() else ''} and per-round cuts "
                        f"(all metrics in {name}.csv)")
        for col in shown.columns:
            t.add_column(col, justify="left" if col in ("metric", "variant", "parameter") else "right")
        for row in shown.itertuples(index=False):
            t.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
        console.print(t)
    click.echo(f"{result.done} done, {result.failed} failed, {result.skipped} skipped of {result.tasks} "
               f"tasks in {result.wall_s:.1f} s ({result.reps_per_min:.1f} replications/min); "
               f"wrote {result.out}")


@click.command(name="sweep")
@click.argument("spec_file", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes (default: all cores; 1 runs in-process; with --local-cluster: Dask "
                   "workers, default 2).")
@click.option("--scheduler", metavar="ADDRESS", default=None, help="Run on a Dask cluster (tcp://HOST:PORT).")
@click.option("--local-cluster", is_flag=True, help="Start a local Dask cluster on 127.0.0.1.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the store and tables (default: sweeps/<spec name>).")
@click.option("--resume", is_flag=True, help="Continue the sweep in --out, skipping finished tasks.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Hold a scenario field at a value (repeatable); joins the spec's [fixed] table.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout at the end.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sweep_command(spec_file, workers, scheduler, local_cluster, out, resume, overrides, as_json, quiet):
    """Run the design of SPEC.toml, storing each replication as it finishes (docs/sweeps.md)."""
    spec = load_spec(spec_file, overrides)
    if out is None:
        p = Path(spec_file)
        out = Path("sweeps") / (p.parent.name if p.stem == "spec" and p.parent.name else p.stem)
    bar, update = _bar(quiet)
    if bar:
        with bar:
            result = run_sweep(spec, out, workers=workers, scheduler=scheduler, local_cluster=local_cluster,
                               resume=resume, progress=update)
    else:
        result = run_sweep(spec, out, workers=workers, scheduler=scheduler, local_cluster=local_cluster,
                           resume=resume)
    if as_json:
        doc = {"out": str(result.out), "tasks": result.tasks, "done": result.done, "failed": result.failed,
               "skipped": result.skipped, "wall_s": round(result.wall_s, 3),
               "reps_per_min": round(result.reps_per_min, 2), "spec_sha256": result.spec_sha256}
        doc.update({name: _records(df) for name, df in result.tables.items()})
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_summary(result)
    if result.failed and result.failed == result.tasks - result.skipped:
        raise SimulationError(f"every task failed ({result.failed}); the messages are in "
                              f"{result.out / 'results.csv'}")
