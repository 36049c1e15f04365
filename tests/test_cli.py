"""The command line end to end: JSON contract, output folder, determinism, scenarios, params, --set.

Runs go through click's CliRunner in-process, on the tiny scenario with two replications and the
cost_plus strategy wherever the point is the plumbing rather than the equilibrium solver.
"""

from __future__ import annotations

import json
import math
import tomllib
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vbp import __version__, data
from vbp.cli import cli
from vbp.errors import SimulationError
from vbp.scenario import load_scenario

TINY = str(Path(__file__).parent / "data" / "tiny.toml")
HEADLINE = {"drug_avg_cut", "joint_avg_cut", "stent_avg_cut", "cumulative_savings_2021_bn"}
TARGET_KEYS = {"name", "published", "mean", "ci_low", "ci_high", "tolerance", "ok"}
RUN_FILES = {"bids.parquet", "units.parquet", "deliveries.parquet", "events.parquet",
             "round_metrics.csv", "summary.json", "manifest.json", "scenario.toml"}
FAST = ["-n", "2", "--workers", "1", "--quiet"]


def invoke(*args: str):
    """Run `vbp ARGS` in-process; stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, list(args))


def ok(result) -> None:
    """Assert exit 0, showing what went wrong otherwise."""
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)


def run_json(*args: str) -> dict:
    """`vbp ARGS --json` -> the single JSON document on stdout."""
    result = invoke(*args, "--json")
    ok(result)
    return json.loads(result.stdout)  # fails on anything but exactly one document


def targets_by_name(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["targets"]}


def check_target(t: dict) -> None:
    """A target row is complete, finite, ordered, and its `ok` agrees with its own numbers."""
    assert set(t) == TARGET_KEYS
    for key in ("published", "mean", "ci_low", "ci_high", "tolerance"):
        assert isinstance(t[key], float | int) and math.isfinite(t[key]), (t["name"], key, t[key])
    assert t["ci_low"] <= t["mean"] <= t["ci_high"]
    assert t["tolerance"] > 0
    assert t["ok"] is (abs(t["mean"] - t["published"]) <= t["tolerance"])


# ---------------------------------------------------------------------------------------------
# reproduce and run: the JSON contract


@pytest.fixture(scope="module")
def reproduce_doc() -> dict:
    """`vbp reproduce --json`, cost_plus bidding, two replications: shared by the tests that read it."""
    return run_json("reproduce", *FAST, "--set", "agents.strategy=cost_plus")


def test_reproduce_json_contract(reproduce_doc):
    doc = reproduce_doc
    rows = targets_by_name(doc)
    assert HEADLINE <= set(rows)
    published = data.read_toml("targets.toml")["headline"]
    for name in HEADLINE:
        check_target(rows[name])
        assert rows[name]["published"] == pytest.approx(published[name]["value"])
    assert rows["cumulative_savings_2021_bn"]["tolerance"] == pytest.approx(0.10 * 260.0)
    assert doc["replications"] == 2
    assert doc["seed"] == 20181206
    assert doc["version"] == __version__
    assert doc["wall_s"] >= 0
    assert doc["scenario"] == "national-history"
    # the in-sample error of the drug rounds' cuts: the seven drug rounds, from the per-round table
    mae = doc["drug_cut_mae"]
    assert mae["rounds"] == sorted(["pilot", "expansion", "batch2", "batch3", "batch4", "batch5", "batch7"])
    errors = [abs(r["mean"] - r["published"]) for r in doc["rounds"] if r["round"] in mae["rounds"]]
    assert mae["mae"] == pytest.approx(sum(errors) / len(errors))
    # the calibration's out-of-sample checks: leave-one-round-out (cut and winner share) and the
    # rolling origin, whose forecast of each round is fitted on the rounds before it only
    order = ["pilot", "expansion", "batch2", "batch3", "batch4", "batch5", "batch7"]
    assert [r["round"] for r in doc["loro"]] == order
    # winner shares only where the round's bidding firms are published (not the expansion's 77)
    assert {r["round"] for r in doc["loro"] if "winner_share_predicted" in r} == set(order[2:])
    assert [r["round"] for r in doc["rolling_origin"]] == order[3:]
    for r in doc["rolling_origin"]:
        assert r["trained_on"] == order[:order.index(r["round"])]
        for prefix in ("", "winner_share_"):
            assert r[prefix + "error"] == pytest.approx(r[prefix + "predicted"] - r[prefix + "published"], abs=2e-4)
    # every refit was simulated at its parameters, and ran its own trust region from its spline
    # refinement; the control refit (nothing left out) is reported
    assert all(r["refit"].startswith(("design point", "refit step", "local design point", "surrogate optimum"))
               for r in doc["loro"])
    assert all(r["objective"] <= r["objective_spline"] for r in doc["loro"])
    assert set(doc["refit_control"]) >= {"params", "objective", "avg_cut_mae", "spline_cv_rmse_avg_cut"}
    # the first batch's published savings (pilot and expansion together) beside the model's
    (first,) = doc["annual_savings_groups"]
    assert first["rounds"] == ["pilot", "expansion"] and first["published"] == pytest.approx(25.3)
    assert first["ci_low"] <= first["mean"] <= first["ci_high"]
    assert first["error_pct"] == pytest.approx(100 * (first["mean"] / 25.3 - 1))


ROUND_STATS = ("procured", "winning_products", "winning_firms", "winner_share", "annual_savings_bn", "max_cut")


def test_reproduce_json_rounds_carry_the_per_round_table(reproduce_doc):
    """Each round holds the average cut as before and every column of the printed per-round table:
    simulated mean, 95% interval and the published value (null where none is published)."""
    published = data.read_toml("targets.toml")["rounds"]
    for r in reproduce_doc["rounds"]:
        assert {"round", "published", "mean", "ci_low", "ci_high", *ROUND_STATS} <= set(r)
        for stat in ROUND_STATS:
            v = r[stat]
            assert set(v) == {"mean", "ci_low", "ci_high", "published"}, (r["round"], stat)
            assert v["ci_low"] <= v["mean"] <= v["ci_high"], (r["round"], stat)
            assert v["published"] == published.get(r["round"], {}).get(stat), (r["round"], stat)
    by_round = {r["round"]: r for r in reproduce_doc["rounds"]}
    assert by_round["batch2"]["winning_firms"]["published"] == 77
    assert by_round["batch2"]["procured"]["published"] is None  # not in the published table


def test_reproduce_json_keys_are_documented(reproduce_doc):
    """Every top-level key of the reproduce document has a row in docs/outputs.md, in order."""
    from vbp.cli import RESULT_JSON_KEYS
    from vbp.clidoc import render_outputs

    assert list(reproduce_doc) == list(RESULT_JSON_KEYS)
    text = render_outputs()
    section = text[text.index("## `vbp reproduce --json`"):]
    for key in reproduce_doc:
        assert f"| `{key}` |" in section, key


def test_savings_groups_sum_each_replication_over_the_group_rounds(monkeypatch):
    """A group's savings are summed per replication over its rounds, other rounds left out; a group
    with a round missing from the run is not reported."""
    import pandas as pd

    from vbp import metrics

    units = pd.DataFrame({
        "rep": [0, 0, 0, 1, 1, 1], "round": ["a", "b", "c"] * 2, "unit": range(6),
        "cut": 0.5, "max_cut": 0.5, "procured": True, "n_winners": 1,
        "annual_savings": [1e9, 2e9, 40e9, 3e9, 4e9, 40e9], "agreed_value_ref": 1e10})
    bids = pd.DataFrame({"rep": units["rep"], "round": units["round"], "bid": 1.0, "firm": 0, "won": True})
    table = {"annual_savings_groups": [{"name": "ab", "rounds": ["a", "b"], "value": 5.0},
                                       {"name": "ad", "rounds": ["a", "d"], "value": 1.0}]}
    monkeypatch.setattr(metrics.data, "read_toml", lambda name: table)
    (row,) = metrics.savings_groups(metrics.round_metrics(units, bids))
    assert row["name"] == "ab" and row["published"] == 5.0
    assert row["mean"] == pytest.approx(5.0)  # (1 + 2 + 3 + 4) / 2 replications
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((3.1, 6.9))
    assert row["error_pct"] == pytest.approx(0.0)


def test_run_tiny_with_equilibrium_bidding():
    doc = run_json("run", TINY, *FAST, "--set", "agents.strategy=equilibrium", "--seed", "7")
    rows = targets_by_name(doc)
    # tiny holds batch 2 and the stent round only: the stent cut and the savings are comparable
    assert {"stent_avg_cut", "cumulative_savings_2021_bn"} <= set(rows)
    assert "joint_avg_cut" not in rows
    for t in rows.values():
        check_target(t)
    assert [r["round"] for r in doc["rounds"]] == ["batch2", "stents"]
    assert doc["replications"] == 2 and doc["seed"] == 7
    assert doc["scenario_sha256"] == load_scenario(TINY, ["agents.strategy=equilibrium"]).digest()
    cost_plus = run_json("run", TINY, *FAST, "--seed", "7")
    assert cost_plus["scenario_sha256"] == load_scenario(TINY).digest()
    assert targets_by_name(cost_plus)["stent_avg_cut"]["mean"] != rows["stent_avg_cut"]["mean"]


# ---------------------------------------------------------------------------------------------
# --out: files, manifest, determinism


def run_out(out: Path, *args: str) -> Path:
    result = invoke("run", TINY, "-n", "2", "--quiet", "--out", str(out), *args)
    ok(result)
    return out


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory) -> Path:
    """One tiny run written to a folder, shared by the tests that only read it."""
    return run_out(tmp_path_factory.mktemp("run") / "out", "--workers", "1", "--seed", "11")


def test_out_folder_holds_every_file(tiny_out):
    names = {p.name for p in tiny_out.iterdir()}
    assert RUN_FILES <= names
    assert not [n for n in names if n.endswith(".tmp")]


def test_manifest_records_scenario_seed_and_versions(tiny_out):
    manifest = json.loads((tiny_out / "manifest.json").read_text())
    assert manifest["scenario_sha256"] == load_scenario(TINY).digest()
    assert manifest["seed"] == 11
    assert manifest["replications"] == 2
    for pkg in ("numpy", "pulp", "highspy", "simpy"):
        assert manifest["versions"][pkg] == metadata.version(pkg)
    assert manifest["versions"]["vbp"] == __version__


def test_summary_and_scenario_copy_are_readable(tiny_out):
    summary = json.loads((tiny_out / "summary.json").read_text())
    assert summary["seed"] == 11 and summary["replications"] == 2
    assert summary["scenario_sha256"] == load_scenario(TINY).digest()
    scenario = tomllib.loads((tiny_out / "scenario.toml").read_text())
    assert scenario["name"] == "tiny"
    assert [r["id"] for r in scenario["rounds"]] == ["batch2", "stents"]
    metrics = (tiny_out / "round_metrics.csv").read_text().splitlines()
    assert len(metrics) == 1 + 2 * 2  # header, 2 replications x 2 rounds


def test_a_results_folder_scenario_reruns_the_same_history(tiny_out, tmp_path):
    """`vbp run R/scenario.toml` replays the run: the saved scenario loads to the same digest and,
    with the manifest's seed, gives the same tables."""
    saved = str(tiny_out / "scenario.toml")
    assert load_scenario(saved).digest() == load_scenario(TINY).digest()
    again = run_json("run", saved, "-n", "2", "--workers", "1", "--quiet", "--seed", "11")
    summary = json.loads((tiny_out / "summary.json").read_text())
    assert again["targets"] == summary["targets"] and again["rounds"] == summary["rounds"]


def metrics_bytes(out: Path) -> bytes:
    return (out / "round_metrics.csv").read_bytes()


def test_same_seed_gives_identical_round_metrics(tiny_out, tmp_path):
    again = run_out(tmp_path / "again", "--workers", "1", "--seed", "11")
    assert metrics_bytes(again) == metrics_bytes(tiny_out)


def test_worker_count_does_not_change_results(tiny_out, tmp_path):
    two = run_out(tmp_path / "two", "--workers", "2", "--seed", "11")
    assert metrics_bytes(two) == metrics_bytes(tiny_out)


def test_other_seed_gives_other_results(tiny_out, tmp_path):
    other = run_out(tmp_path / "other", "--workers", "1", "--seed", "12")
    assert metrics_bytes(other) != metrics_bytes(tiny_out)


# ---------------------------------------------------------------------------------------------
# scenarios, check, params, --set


def test_scenarios_lists_embedded_scenarios_rulebooks_and_rounds():
    result = invoke("scenarios")
    ok(result)
    assert "national-history" in result.stdout
    for name in ("batch4_9", "stent", "joint", "insulin"):  # rulebooks
        assert name in result.stdout
    for rid in ("pilot", "batch7", "stents", "joints"):  # round ids
        assert rid in result.stdout


def test_scenarios_show_prints_toml_that_check_accepts(tmp_path):
    shown = invoke("scenarios", "show", "national-history")
    ok(shown)
    doc = tomllib.loads(shown.stdout)
    assert doc["name"] == "national-history" and doc["rounds"][0] == "pilot"
    copy = tmp_path / "copy.toml"
    copy.write_text(shown.stdout, encoding="utf-8")
    checked, embedded = invoke("check", str(copy)), invoke("check", "national-history")
    ok(checked)
    ok(embedded)
    assert checked.stdout.startswith("ok:")
    digest = load_scenario("national-history").digest()[:12]
    # the copy is the same scenario as the embedded one
    assert digest in checked.stdout and digest in embedded.stdout


def _params() -> list[dict]:
    result = invoke("params", "national-history", "--json")
    ok(result)
    return json.loads(result.stdout)


def _set_arg(row: dict) -> str:
    """PATH=VALUE, the default written as TOML (JSON scalars and lists are TOML values too)."""
    return f"{row['path']}={json.dumps(row['default'])}"


def test_params_json_lists_every_path_with_default_and_description():
    rows = _params()
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == {"path", "default", "description"}
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows)
    for path in ("agents.markup", "rules.volume_share_4plus", "rounds.batch3.bidding_firms"):
        assert path in by_path
    assert by_path["rounds.batch3.bidding_firms"]["default"] == 189
    assert by_path["rules.volume_share_4plus"]["default"] is None  # unset: each rulebook decides
    assert by_path["agents.markup"]["description"]
    text = invoke("params", "national-history")
    ok(text)
    assert "agents.markup" in text.stdout


def _sample_params(k: int = 15) -> list[dict]:
    rows = [r for r in _params() if r["default"] is not None]
    step = max(1, len(rows) // k)
    picked = rows[::step][:k]
    must = [r for r in rows if r["path"] in ("agents.markup", "rounds.batch3.bidding_firms")]
    return picked + [r for r in must if r not in picked]


@pytest.mark.parametrize("row", _sample_params(), ids=lambda r: r["path"])
def test_each_listed_param_can_be_set_to_its_default(row):
    result = invoke("check", "national-history", "--set", _set_arg(row))
    ok(result)
    assert load_scenario("national-history").digest()[:12] in result.stdout


def test_all_listed_params_at_once_leave_the_scenario_unchanged():
    args = [a for row in _params() if row["default"] is not None for a in ("--set", _set_arg(row))]
    result = invoke("check", "national-history", *args)
    ok(result)
    assert load_scenario("national-history").digest()[:12] in result.stdout


def test_set_changes_the_result():
    base = targets_by_name(run_json("run", TINY, *FAST))
    fewer = targets_by_name(run_json("run", TINY, *FAST,
                                     "--set", "rules.volume_share_4plus=0.5"))
    # batch 2 promises 80% of demand to 4+ winners; 50% moves less volume to the cut prices
    key = "cumulative_savings_2021_bn"
    assert fewer[key]["mean"] < base[key]["mean"]
    assert fewer["stent_avg_cut"]["mean"] == pytest.approx(base["stent_avg_cut"]["mean"])


# ---------------------------------------------------------------------------------------------
# version, help, runtime failure


def test_version():
    result = invoke("--version")
    ok(result)
    assert "vbp" in result.stdout and __version__ in result.stdout


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out.extend(_command_paths(cmd, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


COMMANDS = _command_paths(cli)


def test_every_documented_command_exists():
    assert {("reproduce",), ("run",), ("scenarios",), ("scenarios", "show"), ("check",),
            ("params",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "vbp")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_every_command(path, flag):
    result = invoke(*path, flag)
    ok(result)
    assert result.stdout.startswith("Usage:")
    assert result.stderr == ""


def test_runtime_failure_exits_1_without_traceback(monkeypatch):
    def fail(*args, **kwargs):
        raise SimulationError("round batch2, molecule 3: solver found no solution")

    monkeypatch.setattr("vbp.experiment.run", fail)
    result = invoke("run", TINY, *FAST, "--json")
    assert result.exit_code == 1
    assert "batch2" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


def test_command_reference_is_current():
    """docs/cli.md is generated from the click objects (python -m vbp.clidoc > docs/cli.md)."""
    from pathlib import Path

    from vbp.clidoc import render

    doc = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
    assert doc.read_text(encoding="utf-8") == render(), "regenerate: python -m vbp.clidoc > docs/cli.md"


def test_uncalibrated_flag_uses_the_priors():
    from vbp.scenario import calibrated_parameters, load_scenario

    if "agents.cost_median_stent" not in calibrated_parameters():
        pytest.skip("no calibration of the stent cost")
    prior = load_scenario("national-history", calibrated=False).agents.cost_median_stent
    fitted = load_scenario("national-history").agents.cost_median_stent
    assert prior != fitted
    a = CliRunner().invoke(cli, ["reproduce", "-n", "1", "--workers", "1", "--json", "--uncalibrated",
                                 "--set", "agents.strategy=cost_plus"])
    b = CliRunner().invoke(cli, ["reproduce", "-n", "1", "--workers", "1", "--json",
                                 "--set", "agents.strategy=cost_plus"])
    assert a.exit_code == 0 and b.exit_code == 0
    assert json.loads(a.stdout)["scenario_sha256"] != json.loads(b.stdout)["scenario_sha256"]


def test_output_reference_is_current_and_complete():
    """docs/outputs.md is generated from vbp/records.py (python -m vbp.clidoc outputs), every
    column documented."""
    from pathlib import Path

    from vbp.clidoc import render_outputs

    doc = Path(__file__).resolve().parent.parent / "docs" / "outputs.md"
    text = render_outputs()
    assert doc.read_text(encoding="utf-8") == text, "regenerate: python -m vbp.clidoc outputs > docs/outputs.md"
    assert "|  |" not in text, "a column has no meaning in vbp/records.py"
