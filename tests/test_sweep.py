"""Sweep specs, designs, the task loop, export, resume and the `vbp sweep` command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from vbp import sweep as sw
from vbp.cli import cli
from vbp.errors import InputError
from vbp.executors import Backend, InProcessExecutor, open_executor, run_tasks

TINY = Path(__file__).parent / "data" / "tiny.toml"

GRID = """
scenario = "{tiny}"
replications = 2
seed = 7
[design]
kind = "grid"
[parameters]
"rules.volume_share_4plus" = [0.6, 0.8]
agents.markup = [0.3, 0.5, 0.7]
"""


def _spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text.replace("{tiny}", TINY.as_posix()), encoding="utf-8")
    return path


def _cli(*args: str):
    return CliRunner().invoke(cli, ["sweep", *args], catch_exceptions=False)


# -- spec validation ---------------------------------------------------------------------------

def test_parse_grid_spec_and_hash(tmp_path):
    spec = sw.load_spec(_spec(tmp_path, GRID))
    assert (spec.kind, spec.replications, spec.seed, spec.design_seed) == ("grid", 2, 7, 7)
    assert spec.parameters == (("rules.volume_share_4plus", (0.6, 0.8)), ("agents.markup", (0.3, 0.5, 0.7)))
    assert spec.digest() == sw.load_spec(_spec(tmp_path, GRID, "copy.toml")).digest()
    assert spec.digest() != sw.load_spec(_spec(tmp_path, GRID.replace("seed = 7", "seed = 8"))).digest()
    assert spec.digest() != sw.load_spec(_spec(tmp_path, GRID), ["agents.strategy=cost_plus"]).digest()


BAD = [
    ("replicatons = 2\n", "replicatons", "did you mean 'replications'"),
    (GRID.replace('scenario = "{tiny}"', ""), "scenario", "missing required field"),
    (GRID.replace("replications = 2", ""), "replications", "missing required field"),
    (GRID.replace("replications = 2", "replications = 0"), "replications", "between 1"),
    (GRID.replace("replications = 2", 'replications = "2"'), "replications", "whole number"),
    (GRID.replace("seed = 7", "seed = 1.5"), "seed", "whole number"),
    (GRID.replace('kind = "grid"', 'kind = "gird"'), "design.kind", "did you mean 'grid'"),
    (GRID.replace('kind = "grid"', ""), "design.kind", "missing required field"),
    (GRID.replace('kind = "grid"', 'kind = "grid"\nsampels = 4'), "design.sampels", "did you mean 'samples'"),
    (GRID.replace("[0.6, 0.8]", "0.6"), "parameters.rules.volume_share_4plus", "non-empty list"),
    (GRID.replace("[0.6, 0.8]", "[]"), "parameters.rules.volume_share_4plus", "non-empty list"),
    (GRID.replace('kind = "grid"', 'kind = "lhs"\nsamples = 4'), "parameters.rules.volume_share_4plus",
     "range"),
    (GRID.replace('kind = "grid"', 'kind = "lhs"'), "design.samples", "missing required field"),
    (GRID.replace('kind = "grid"', 'kind = "grid"\nsamples = 4'), "design.samples", "not used"),
    ("[design]\nkind = 'sobol'\nsamples = 6\n[parameters]\n'agents.markup' = {low = 0.1, high = 0.2}\n",
     "design.samples", "power of 2"),
    ("[design]\nkind = 'random'\nsamples = 3\n[parameters]\n'agents.markup' = {low = 0.3, high = 0.2}\n",
     "parameters.agents.markup", "less than high"),
    ("[design]\nkind = 'random'\nsamples = 3\n[parameters]\n'agents.markup' = {low = 0.1}\n",
     "parameters.agents.markup.high", "missing required field"),
    ("[design]\nkind = 'random'\nsamples = 3\n[parameters]\n'agents.markup' = {low = 0.1, hihg = 1}\n",
     "parameters.agents.markup.hihg", "did you mean 'high'"),
    ("[design]\nkind = 'counterfactual'\nvariants = ['single_winer']\n", "design.variants",
     "did you mean 'single_winner'"),
    ("[design]\nkind = 'counterfactual'\n", "design.variants", "non-empty list"),
    (GRID.replace('kind = "grid"', 'kind = "grid"\nvariants = ["single_winner"]'), "design.variants",
     "only a counterfactual"),
    ("[design]\nkind = 'grid'\n", "parameters", "at least one parameter"),
    ("design = 3\n", "design", "expected a table"),
    ("[design]\nkind = 'counterfactual'\nvariants = [['single_winner']]\n", "design.variants", "unknown variant"),
    (GRID.replace("agents.markup", '"agents.markup" = [0.1]\nagents.markup'), "parameters.agents.markup",
     "listed twice"),
]


@pytest.mark.parametrize("text,field,message", BAD)
def test_bad_specs_name_the_file_and_field(tmp_path, text, field, message):
    if not text.lstrip().startswith("scenario") and "scenario =" not in text and field != "scenario":
        text = 'scenario = "{tiny}"\nreplications = 1\n' + text
    path = _spec(tmp_path, text)
    with pytest.raises(InputError) as err:
        sw.load_spec(path)
    assert err.value.file == str(path) and err.value.field == field
    assert message in str(err.value)


@pytest.mark.parametrize("params,field,message", [
    ('"agents.markpu" = [0.1]', "parameters.agents.markpu", "did you mean 'agents.markup'"),
    ('"agents" = [0.1]', "parameters.agents", "no such scenario parameter"),
])
def test_parameter_paths_must_exist_in_the_scenario(tmp_path, params, field, message):
    text = f'scenario = "{{tiny}}"\nreplications = 1\n[design]\nkind = "grid"\n[parameters]\n{params}\n'
    spec = sw.load_spec(_spec(tmp_path, text))
    with pytest.raises(InputError) as err:
        sw.plan_sweep(spec)
    assert err.value.field == field and message in str(err.value)


@pytest.mark.parametrize("values,bad", [('["a", "b"]', "a"), ("[0.6, true]", "True"), ("[0.6, [0.7]]", "[0.7]")])
def test_grid_values_must_have_the_parameter_type(tmp_path, values, bad):
    """A value of the wrong type is the spec's mistake, reported before any task runs (a value of
    the right type out of its range is a point that fails, stored as an error row)."""
    text = (f'scenario = "{{tiny}}"\nreplications = 1\n[design]\nkind = "grid"\n[parameters]\n'
            f'"rules.volume_share_4plus" = {values}\n"agents.strategy" = ["cost_plus"]\n')
    path = _spec(tmp_path, text)
    with pytest.raises(InputError) as err:
        sw.plan_sweep(sw.load_spec(path))
    assert (err.value.file, err.value.field) == (str(path), "parameters.rules.volume_share_4plus")
    assert "expected number values" in str(err.value) and bad in str(err.value)
    text = text.replace(values, "[0.6]").replace('["cost_plus"]', "[0.5]")
    with pytest.raises(InputError, match="expected text values") as err:
        sw.plan_sweep(sw.load_spec(_spec(tmp_path, text)))
    assert err.value.field == "parameters.agents.strategy"


def test_a_swept_parameter_cannot_also_be_fixed_or_set(tmp_path):
    path = _spec(tmp_path, GRID + '[fixed]\n"agents.markup" = 0.9\n')
    with pytest.raises(InputError, match="cannot also be held fixed") as err:
        sw.load_spec(path)
    assert (err.value.file, err.value.field) == (str(path), "fixed.agents.markup")
    with pytest.raises(InputError, match="agents.markup is swept") as err:
        sw.load_spec(_spec(tmp_path, GRID), ["agents.markup=0.9"])
    assert err.value.field == "--set"
    result = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, GRID)), "--out", str(tmp_path / "o"),
                                      "--set", "agents.markup=0.9"])
    assert result.exit_code == 2 and "agents.markup" in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


def test_an_unknown_scenario_is_named_with_the_spec_field(tmp_path):
    path = _spec(tmp_path, GRID.replace('"{tiny}"', '"nosuch-scenario"'))
    with pytest.raises(InputError) as err:
        sw.plan_sweep(sw.load_spec(path))
    assert (err.value.file, err.value.field) == (str(path), "scenario")
    assert "'nosuch-scenario'" in str(err.value) and "national-history" in str(err.value)


def test_a_range_needs_a_numeric_parameter(tmp_path):
    text = ('scenario = "{tiny}"\nreplications = 1\n[design]\nkind = "random"\nsamples = 2\n'
            '[parameters]\n"agents.strategy" = {low = 1, high = 2}\n')
    with pytest.raises(InputError, match="numeric"):
        sw.plan_sweep(sw.load_spec(_spec(tmp_path, text)))


# -- designs -----------------------------------------------------------------------------------

def _design(tmp_path, kind, samples, params):
    body = "\n".join(f'"{p}" = {{low = {lo}, high = {hi}}}' for p, (lo, hi) in params.items())
    text = (f'scenario = "{{tiny}}"\nreplications = 1\nseed = 5\n[design]\nkind = "{kind}"\n'
            f'samples = {samples}\n[parameters]\n{body}\n')
    return sw.plan_sweep(sw.load_spec(_spec(tmp_path, text)))


def test_grid_points_in_order_last_parameter_fastest(tmp_path):
    plan = sw.plan_sweep(sw.load_spec(_spec(tmp_path, GRID)))
    got = [(p.values["rules.volume_share_4plus"], p.values["agents.markup"]) for p in plan.points]
    assert got == [(0.6, 0.3), (0.6, 0.5), (0.6, 0.7), (0.8, 0.3), (0.8, 0.5), (0.8, 0.7)]
    assert plan.scenarios[4].rules.volume_share_4plus == 0.8 and plan.scenarios[4].agents.markup == 0.5


def test_random_and_lhs_within_bounds_deterministic_and_lhs_stratified(tmp_path):
    bounds = {"agents.markup": (0.1, 0.9), "market.completion_ratio": (1.0, 3.0)}
    for kind in ("random", "lhs"):
        a = _design(tmp_path, kind, 8, bounds)
        b = _design(tmp_path, kind, 8, bounds)
        assert [p.values for p in a.points] == [p.values for p in b.points]
        x = np.array([[p.values[k] for k in bounds] for p in a.points])
        lo, hi = np.array(list(bounds.values())).T
        assert x.shape == (8, 2) and (x >= lo).all() and (x <= hi).all()
        if kind == "lhs":  # one sample in each of the 8 equal strata of every parameter
            strata = np.floor((x - lo) / (hi - lo) * 8).astype(int)
            for j in range(2):
                assert sorted(strata[:, j]) == list(range(8))


def test_sobol_design_size_and_integer_rounding(tmp_path):
    plan = _design(tmp_path, "sobol", 4, {"agents.markup": (0.1, 0.9), "rounds.batch2.bidding_firms": (5, 20),
                                         "market.completion_ratio": (1.0, 3.0)})
    assert len(plan.points) == 4 * (3 + 2)
    firms = [p.values["rounds.batch2.bidding_firms"] for p in plan.points]
    assert all(isinstance(f, int) and 5 <= f <= 20 for f in firms)
    assert plan.scenarios[0].round("batch2").bidding_firms == firms[0]


def test_counterfactual_points_start_with_the_baseline(tmp_path):
    text = ('scenario = "{tiny}"\nreplications = 1\n[design]\nkind = "counterfactual"\n'
            'variants = ["no_50pct_route", "single_winner", "no_50pct_route"]\n')
    plan = sw.plan_sweep(sw.load_spec(_spec(tmp_path, text)))
    assert [p.values["variant"] for p in plan.points] == ["baseline", "no_50pct_route", "single_winner"]
    assert plan.scenarios[1].rules.safe_harbour is False and plan.scenarios[0].rules.safe_harbour is None


# -- running -----------------------------------------------------------------------------------

def test_sweep_results_identical_for_one_and_two_workers(tmp_path):
    path = _spec(tmp_path, GRID)
    r1 = _cli(str(path), "--out", str(tmp_path / "w1"), "--workers", "1", "--json")
    r2 = _cli(str(path), "--out", str(tmp_path / "w2"), "--workers", "2", "--quiet")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    doc = json.loads(r1.output)
    assert set(doc) == {"out", "tasks", "done", "failed", "skipped", "wall_s", "reps_per_min", "spec_sha256"}
    assert (doc["tasks"], doc["done"], doc["failed"], doc["skipped"]) == (12, 12, 0, 0)
    a = (tmp_path / "w1" / "results.csv").read_bytes()
    assert a == (tmp_path / "w2" / "results.csv").read_bytes()
    df = pd.read_csv(tmp_path / "w1" / "results.csv")
    pq = pd.read_parquet(tmp_path / "w1" / "results.parquet")
    assert list(pq.columns) == list(df.columns) and len(pq) == len(df) == 12
    assert list(df.columns[:7]) == ["point", "rep", "seed", "status", "error", "rules.volume_share_4plus",
                                    "agents.markup"]
    assert list(df.columns[7:11]) == list(sw.HEADLINE)
    assert {"avg_cut.batch2", "annual_savings_bn.stents", "winning_products.batch2",
            "winner_share.stents"} <= set(df.columns)
    assert df[["point", "rep"]].values.tolist() == sorted(df[["point", "rep"]].values.tolist())
    assert (df["seed"] == 7).all() and (df["status"] == "ok").all()
    # common random numbers: the drug volume share leaves the stent round exactly as it was
    assert df.groupby(["rep", "agents.markup"])["avg_cut.stents"].nunique().eq(1).all()
    assert df.groupby(["rep", "rules.volume_share_4plus"])["avg_cut.stents"].nunique().gt(1).all()
    man = json.loads((tmp_path / "w1" / "manifest.json").read_text())
    assert man["kind"] == "sweep" and man["status"] == "complete" and man["spec_sha256"] == doc["spec_sha256"]
    assert man["parameters"] == ["rules.volume_share_4plus", "agents.markup"]
    assert man["timings"]["done"] == 12 and "highspy" in man["versions"] and len(man["scenario_sha256"]) == 64


def test_results_match_a_direct_replication(tmp_path):
    from vbp.model import run_replication
    from vbp.scenario import load_scenario

    _cli(str(_spec(tmp_path, GRID)), "--out", str(tmp_path / "o"), "--workers", "1", "--quiet")
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    sc = load_scenario(TINY, ["rules.volume_share_4plus=0.8", "agents.markup=0.5"])
    want = sw.task_metrics(run_replication(sc, 7, 1), ["batch2", "stents"], ["batch2"])
    row = df[(df["point"] == 4) & (df["rep"] == 1)].iloc[0]
    for k, v in want.items():
        assert (math.isnan(v) and math.isnan(row[k])) or row[k] == pytest.approx(v, rel=1e-12), k


def _failing_task(scenario, seed, rep):
    if scenario.agents.markup == 0.5:
        raise RuntimeError("solver exploded")
    return sw.run_task(scenario, seed, rep)


def test_a_failing_task_is_recorded_and_the_sweep_goes_on(tmp_path):
    text = GRID.replace('"rules.volume_share_4plus" = [0.6, 0.8]', "").replace(
        "[0.3, 0.5, 0.7]", "[0.3, 0.5, 0.7]\n\"agents.capacity_low\" = [0.8, 3.0]")
    spec = sw.load_spec(_spec(tmp_path, text))
    res = sw.run_sweep(spec, tmp_path / "o", workers=1, task=_failing_task)
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert res.complete and res.tasks == 12 and len(df) == 12
    bad_cap = df["agents.capacity_low"] == 3.0  # above capacity_high: the point does not validate
    assert (df.loc[bad_cap, "status"] == "error").all()
    assert df.loc[bad_cap, "error"].str.contains("capacity_low").all()
    boom = (df["agents.markup"] == 0.5) & ~bad_cap
    assert (df.loc[boom, "error"] == "RuntimeError: solver exploded").all()
    assert (df.loc[~bad_cap & ~boom, "status"] == "ok").all() and res.done == 4 and res.failed == 8
    assert df.loc[~bad_cap & ~boom, "avg_cut.batch2"].notna().all()


class _Interrupt:
    """A task that raises KeyboardInterrupt on its n-th call (as Ctrl-C would, in-process)."""

    def __init__(self, n):
        self.calls, self.n = 0, n

    def __call__(self, scenario, seed, rep):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return sw.run_task(scenario, seed, rep)


def test_ctrl_c_exports_what_finished_and_resume_completes_it(tmp_path):
    spec = sw.load_spec(_spec(tmp_path, GRID))
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(spec, tmp_path / "o", workers=1, task=_Interrupt(4))
    part = pd.read_csv(tmp_path / "o" / "results.csv")
    assert len(part) == 3
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["status"] == "interrupted"
    with pytest.raises(InputError, match="--resume"):
        sw.run_sweep(spec, tmp_path / "o", workers=1)
    res = sw.run_sweep(spec, tmp_path / "o", workers=1, resume=True)
    assert (res.skipped, res.done, res.complete) == (3, 9, True)
    sw.run_sweep(spec, tmp_path / "full", workers=1)
    assert (tmp_path / "o" / "results.csv").read_bytes() == (tmp_path / "full" / "results.csv").read_bytes()


def test_resume_refuses_a_changed_spec_naming_both_hashes(tmp_path):
    path = _spec(tmp_path, GRID)
    assert _cli(str(path), "--out", str(tmp_path / "o"), "--workers", "1", "--quiet").exit_code == 0
    old = sw.load_spec(path).digest()
    path.write_text(path.read_text().replace("replications = 2", "replications = 3"))
    res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "o"), "--resume"])
    assert res.exit_code == 2
    assert old in res.output and sw.load_spec(path).digest() in res.output
    again = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "o")])
    assert again.exit_code == 2 and "--resume" in again.output


def test_counterfactual_sweep_writes_paired_table(tmp_path):
    text = ('scenario = "{tiny}"\nreplications = 3\nseed = 2\n[design]\nkind = "counterfactual"\n'
            'variants = ["single_winner", "no_50pct_route"]\n')
    res = _cli(str(_spec(tmp_path, text)), "--out", str(tmp_path / "o"), "--workers", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    table = pd.read_csv(tmp_path / "o" / "counterfactual.csv")
    assert list(table.columns) == ["metric", "variant", "baseline_mean", "variant_mean", "diff_mean",
                                   "diff_ci_low", "diff_ci_high", "n"]
    assert len(doc["counterfactual"]) == len(table) and set(table["variant"]) == {"single_winner",
                                                                                  "no_50pct_route"}
    stent = table[table["metric"] == "avg_cut.stents"]  # drug rules leave the stent round alone
    assert (stent["diff_mean"] == 0).all() and (stent["n"] == 3).all()
    results = pd.read_csv(tmp_path / "o" / "results.csv")
    assert list(results.columns[:6]) == ["point", "rep", "seed", "status", "error", "variant"]


def test_sobol_sweep_writes_indices(tmp_path):
    text = ('scenario = "{tiny}"\nreplications = 1\nseed = 2\n[design]\nkind = "sobol"\nsamples = 4\n'
            '[parameters]\n"agents.markup" = {low = 0.1, high = 0.8}\n'
            '"rounds.batch2.bidding_firms" = {low = 5, high = 20}\n')
    res = _cli(str(_spec(tmp_path, text)), "--out", str(tmp_path / "o"), "--workers", "1", "--json")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "o" / "sobol.csv")
    assert list(table.columns) == ["metric", "parameter", "S1", "S1_conf", "ST", "ST_conf"]
    assert set(table["parameter"]) == {"agents.markup", "rounds.batch2.bidding_firms"}
    stent = table[table["metric"] == "avg_cut.stents"].set_index("parameter")
    assert stent.loc["rounds.batch2.bidding_firms", "ST"] == pytest.approx(0, abs=1e-12)
    assert len(json.loads(res.output)["sobol"]) == len(table)


def test_fixed_table_and_set_option_apply_to_every_point(tmp_path):
    text = GRID + '[fixed]\n"market.completion_ratio" = 2.5\n'
    spec = sw.load_spec(_spec(tmp_path, text), ["agents.cost_sigma_drug=0.6"])
    plan = sw.plan_sweep(spec)
    assert all(s.market.completion_ratio == 2.5 and s.agents.cost_sigma_drug == 0.6 for s in plan.scenarios)
    assert spec.as_dict()["fixed"] == {"market.completion_ratio": 2.5, "agents.cost_sigma_drug": 0.6}


def test_cli_bad_spec_exits_2(tmp_path):
    res = CliRunner().invoke(cli, ["sweep", str(_spec(tmp_path, GRID.replace("grid", "grud")))])
    assert res.exit_code == 2 and "design.kind" in res.output


# -- executors ---------------------------------------------------------------------------------

def _die_once(marker: str, x: int) -> int:
    if x == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies, as if killed
    return x * x


def test_a_dead_worker_is_replaced_and_its_tasks_rerun(tmp_path):
    got: dict = {}
    with open_executor(workers=2) as backend:
        run_tasks(backend, _die_once, [(i, (str(tmp_path / "m"), i)) for i in range(6)],
                  lambda k, r, e: got.__setitem__(k, (r, e)))
    assert got == {i: (i * i, None) for i in range(6)}


def test_in_process_executor_reports_errors_per_task():
    got: dict = {}
    run_tasks(Backend(InProcessExecutor(), "in-process", 1), lambda x: 1 / x, [(i, (i,)) for i in (1, 0, 2)],
              lambda k, r, e: got.__setitem__(k, (r, e)))
    assert got == {1: (1.0, None), 0: (None, "ZeroDivisionError: division by zero"), 2: (0.5, None)}


def test_missing_dask_is_a_clear_input_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match="pip install 'vbp\\[dask\\]'"):
        with open_executor(scheduler="tcp://127.0.0.1:8786"):
            pass
    with pytest.raises(InputError, match="not both"):
        with open_executor(scheduler="tcp://127.0.0.1:8786", local_cluster=True):
            pass


# -- shipped experiments -----------------------------------------------------------------------

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*/spec*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[f"{p.parent.name}/{p.stem}" for p in EXPERIMENTS])
def test_shipped_experiment_specs_plan_cleanly(path):
    plan = sw.plan_sweep(sw.load_spec(path))
    assert plan.points and all(not isinstance(s, str) for s in plan.scenarios)
    readme = (path.parent / "README.md").read_text(encoding="utf-8")
    assert readme.count(f"vbp sweep experiments/{path.parent.name}/{path.name}")


def test_there_are_at_least_five_experiments():
    assert len({p.parent for p in EXPERIMENTS}) >= 5


def test_policy_variants_experiment_runs_at_tiny_size(tmp_path):
    import dataclasses

    spec = sw.load_spec(Path(__file__).parent.parent / "experiments" / "policy_variants" / "spec.toml",
                        ["agents.strategy=cost_plus"])  # no equilibrium solves in a unit test
    res = sw.run_sweep(dataclasses.replace(spec, replications=2), tmp_path / "o", workers=1)
    assert (res.done, res.failed) == (10, 0)
    table = res.tables["counterfactual"].set_index(["metric", "variant"])
    assert table.loc[("avg_cut.batch7", "single_winner"), "diff_mean"] > 0
    assert table.loc[("avg_cut.stents", "no_50pct_route"), "diff_mean"] == 0
