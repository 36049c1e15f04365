"""Figures: every kind drawn from small real results (Agg backend), plot functions, `vbp plot`.

The Agg backend is set in conftest.py. Run folders come from `vbp run tests/data/tiny.toml`
(cost_plus, two replications); sweep folders are synthetic tables in the contract `vbp sweep`
writes (results.csv, sobol.csv, counterfactual.csv, manifest.json); a reproduce-like folder is the run
folder relabelled as the national history, with out-of-sample rows in its summary.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.axes import Axes

from vbp import cli_plot, plots, report, style
from vbp.cli import cli

TINY = str(Path(__file__).parent / "data" / "tiny.toml")
RUN_KINDS = ["targets", "cuts", "savings", "bids", "winners"]
SWEEP_KINDS = ["response", "heatmap", "sobol", "counterfactual"]
MIN_BYTES = {"png": 8_000, "pdf": 5_000, "svg": 5_000}


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def ok(result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)


def write_sweep(folder: Path, *, sobol: bool = True, counterfactual: bool = True, reps: int = 3,
                failed: bool = True) -> Path:
    """A small synthetic sweep folder: a 3 x 2 grid over two parameters with known responses."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    rows, point = [], 0
    for share in (0.6, 0.7, 0.8):
        for gate in (1.5, 1.8):
            for rep in range(reps):
                noise = rng.normal(0, 0.005)
                rows.append({"point": point, "rep": rep, "seed": 7, "status": "ok", "error": "",
                             "rules.volume_share_4plus": share, "rules.gate_ratio": gate,
                             "drug_avg_cut": 0.3 + 0.5 * share - 0.1 * gate + noise,
                             "stent_avg_cut": 0.9 + noise, "joint_avg_cut": np.nan,
                             "cumulative_savings_2021_bn": 100 + 150 * share + 1000 * noise,
                             "avg_cut.batch2": 0.4 + share / 5, "winning_products.batch2": 100 + rep})
            point += 1
    if failed:
        rows.append({**rows[-1], "rep": reps, "status": "error", "error": "solver failed",
                     "drug_avg_cut": np.nan})
    df = pd.DataFrame(rows)
    df.to_csv(folder / "results.csv", index=False)
    metric_cols = [c for c in df.columns if "cut" in c or "_bn" in c or "." in c and "rules" not in c]
    manifest = {"kind": "sweep", "scenario": "tiny", "parameters": ["rules.volume_share_4plus",
                                                                     "rules.gate_ratio"],
                "metrics": metric_cols, "design": {"kind": "grid"}, "seed": 7, "replications": reps}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if sobol:
        pd.DataFrame([{"metric": m, "parameter": p, "S1": s1, "S1_conf": 0.05, "ST": s1 + 0.1, "ST_conf": 0.07}
                      for m in ("drug_avg_cut", "cumulative_savings_2021_bn")
                      for p, s1 in (("agents.markup", 0.6), ("market.completion_ratio", 0.2))]
                     ).to_csv(folder / "sobol.csv", index=False)
    if counterfactual:
        pd.DataFrame([{"metric": m, "variant": v, "baseline_mean": b, "variant_mean": b + d, "diff_mean": d,
                       "diff_ci_low": d - 0.02 * abs(b), "diff_ci_high": d + 0.02 * abs(b), "n": 4}
                      for m, b in (("drug_avg_cut", 0.41), ("cumulative_savings_2021_bn", 157.9))
                      for v, d in (("single_winner", 0.1 * b), ("no_50pct_route", -0.02 * b))]
                     ).to_csv(folder / "counterfactual.csv", index=False)
    return folder


@pytest.fixture()
def sweep_dir(tmp_path) -> Path:
    return write_sweep(tmp_path / "S")


LORO = [{"round": "pilot", "published": 0.52, "predicted": 0.54, "error": 0.02, "pi_low": 0.23,
         "pi_high": 0.71, "covered": True},
        {"round": "batch2", "published": 0.53, "predicted": 0.50, "error": -0.03, "pi_low": 0.375,
         "pi_high": 0.60, "covered": True, "winner_share_published": 0.58, "winner_share_predicted": 0.62},
        {"round": "batch3", "published": 0.53, "predicted": 0.504, "error": -0.026, "pi_low": 0.417,
         "pi_high": 0.593, "covered": True}]
ROLLING = [{"round": "batch3", "trained_on": ["pilot", "batch2"], "published": 0.53, "predicted": 0.513,
            "error": -0.017, "winner_share_published": 0.66, "winner_share_predicted": 0.81}]


def write_reproduce(folder: Path, run: Path, loro: list[dict]) -> Path:
    """The run folder relabelled as a reproduce of the national history, `loro` in its summary.json."""
    shutil.copytree(run, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "kind": "reproduce",
                                                      "scenario": report.HEADLINE_SCENARIO}))
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "loro": loro, "rolling_origin": ROLLING}))
    return folder


@pytest.fixture()
def reproduce_dir(run_dir, tmp_path) -> Path:
    return write_reproduce(tmp_path / "P", run_dir, LORO)


def check_figure(path: Path, fmt: str = "png") -> None:
    assert path.is_file(), path
    size = path.stat().st_size
    assert size > MIN_BYTES[fmt], (path, size)
    head = path.read_bytes()[:8]
    assert head.startswith({"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}[fmt])


# --- the CLI -------------------------------------------------------------------------------------


def test_kind_names_match_the_registry():
    assert list(cli_plot._KIND_NAMES) == list(report.KINDS)


def test_plot_run_draws_every_run_kind(run_dir, tmp_path):
    out = tmp_path / "F"
    result = invoke("plot", str(run_dir), "--out", str(out))
    ok(result)
    for kind in RUN_KINDS:
        check_figure(out / f"{kind}.png")
    assert sorted(p.stem for p in out.iterdir()) == sorted(RUN_KINDS)
    assert result.output.count("wrote ") == len(RUN_KINDS)


def test_plot_default_out_is_inside_results(run_dir):
    ok(invoke("plot", str(run_dir), "--kind", "cuts"))
    check_figure(run_dir / "figures" / "cuts.png")


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_plot_formats(run_dir, tmp_path, fmt):
    ok(invoke("plot", str(run_dir), "--kind", "bids", "--kind", "targets", "--format", fmt,
              "--out", str(tmp_path)))
    check_figure(tmp_path / f"bids.{fmt}", fmt)
    check_figure(tmp_path / f"targets.{fmt}", fmt)


def test_plot_is_deterministic(run_dir, tmp_path):
    for sub in ("a", "b"):
        ok(invoke("plot", str(run_dir), "--kind", "bids", "--format", "pdf", "--out", str(tmp_path / sub)))
    assert (tmp_path / "a" / "bids.pdf").read_bytes() == (tmp_path / "b" / "bids.pdf").read_bytes()


def test_plot_sweep_draws_every_sweep_kind(sweep_dir, tmp_path):
    out = tmp_path / "F"
    ok(invoke("plot", str(sweep_dir), "--out", str(out)))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["response-rules_volume_share_4plus.png", "response-rules_gate_ratio.png",
                            "heatmap-rules_volume_share_4plus-rules_gate_ratio.png", "sobol.png",
                            "counterfactual.png"])
    for p in out.iterdir():
        check_figure(p)


def test_plot_metric_option_selects_panels(sweep_dir, tmp_path):
    ok(invoke("plot", str(sweep_dir), "--kind", "response", "--metric", "avg_cut.batch2",
              "--out", str(tmp_path)))
    fig = report.draw(report.load_results(sweep_dir), ("response",), ("avg_cut.batch2",))[0][1]
    assert [a.get_ylabel() for a in fig.axes] == ["average cut, batch2 (%)"]


def test_kinds_that_fit(run_dir, sweep_dir, tmp_path):
    assert report.fitting(report.load_results(run_dir)) == RUN_KINDS
    assert report.fitting(report.load_results(sweep_dir)) == SWEEP_KINDS
    only = write_sweep(tmp_path / "cf", sobol=False)
    (only / "results.csv").unlink()
    assert report.fitting(report.load_results(only)) == ["counterfactual"]


def test_validation_fits_only_with_leave_one_round_out_rows(run_dir, reproduce_dir, tmp_path):
    assert report.fitting(report.load_results(reproduce_dir)) == [
        "targets", "cuts", "savings", "validation", "bids", "winners"]
    no_loro = write_reproduce(tmp_path / "none", run_dir, [])
    assert "validation" not in report.fitting(report.load_results(no_loro))
    assert "validation" not in report.fitting(report.load_results(run_dir))  # not the national history


def test_plot_validation_writes_the_figure(reproduce_dir, tmp_path):
    result = invoke("plot", str(reproduce_dir), "--kind", "validation", "--out", str(tmp_path / "F"))
    ok(result)
    check_figure(tmp_path / "F" / "validation.png")
    assert [p.name for p in (tmp_path / "F").iterdir()] == ["validation.png"]


@pytest.mark.parametrize("args, words", [
    (("plot", "{missing}"), "no such results folder"),
    (("plot", "{empty}"), "no manifest.json"),
    (("plot", "{run}", "--kind", "sobol"), "does not fit"),
    (("plot", "{sweep}", "--kind", "bids"), "does not fit"),
    (("plot", "{sweep}", "--kind", "validation"), "does not fit"),
    (("plot", "{run}", "--kind", "validation"), "does not fit"),
    (("plot", "{bad}"), "manifest.json is unreadable"),
])
def test_plot_bad_input_exits_2(run_dir, sweep_dir, tmp_path, args, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "run": run_dir, "sweep": sweep_dir,
             "bad": tmp_path / "bad"}
    result = invoke(*[a.format(**{k: str(v) for k, v in paths.items()}) for a in args])
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert "Traceback" not in result.output


def test_unknown_metric_exits_2_and_writes_nothing(sweep_dir, tmp_path):
    result = invoke("plot", str(sweep_dir), "--metric", "avg_cut.batch22", "--out", str(tmp_path / "F"))
    assert result.exit_code == 2
    assert "no metric 'avg_cut.batch22' (did you mean 'avg_cut.batch2'?)" in result.output
    assert not (tmp_path / "F").exists()


def test_metric_missing_from_one_table_skips_that_figure(sweep_dir, tmp_path):
    ok(invoke("plot", str(sweep_dir), "--metric", "avg_cut.batch2", "--out", str(tmp_path)))
    assert not (tmp_path / "sobol.png").exists() and (tmp_path / "response-rules_gate_ratio.png").exists()


def test_plot_unknown_kind_is_a_usage_error(run_dir):
    result = invoke("plot", str(run_dir), "--kind", "pie")
    assert result.exit_code == 2 and "pie" in result.output


# --- the plot functions ----------------------------------------------------------------------------


def test_functions_return_the_given_axes(run_dir, sweep_dir):
    res, sw = report.load_results(run_dir), report.load_results(sweep_dir)
    b, gates, anchors = report._bids(res)
    d = report._sweep(sw)
    calls = [
        lambda ax: plots.plot_targets(res.table("targets.csv"), ax=ax),
        lambda ax: plots.plot_round_cuts(report.round_summary(res), ax=ax),
        lambda ax: plots.plot_savings_path(res.table("savings_path.csv"), None, ax=ax),
        lambda ax: plots.plot_validation(pd.DataFrame(LORO), pd.DataFrame(ROLLING), ax=ax),
        lambda ax: plots.plot_bids(b, ax=ax),
        lambda ax: plots.plot_bid_gate(b, gates, ax=ax, anchor_factor=anchors),
        lambda ax: plots.plot_winners(res.table("units.parquet"), (1, 2, 2, 3), ax=ax),
        lambda ax: plots.plot_response(d, "rules.gate_ratio", "drug_avg_cut", ax=ax),
        lambda ax: plots.plot_heatmap(d, "rules.gate_ratio", "rules.volume_share_4plus", "drug_avg_cut", ax=ax),
        lambda ax: plots.plot_sobol(sw.table("sobol.csv"), "drug_avg_cut", ax=ax),
        lambda ax: plots.plot_counterfactual(sw.table("counterfactual.csv"), "drug_avg_cut", ax=ax),
    ]
    for call in calls:
        fig, ax = plt.subplots()
        assert call(ax) is ax
        assert ax.has_data() or ax.images or ax.collections
        assert ax.get_xlabel() or ax.get_ylabel() or ax.get_xticklabels()
        plt.close(fig)


def test_functions_make_their_own_axes(run_dir):
    ax = plots.plot_round_cuts(report.round_summary(report.load_results(run_dir)))
    assert isinstance(ax, Axes)
    assert ax.figure.get_size_inches()[0] == pytest.approx(style.COLUMN_IN)
    plt.close(ax.figure)


def test_round_cuts_show_published_points_and_intervals():
    t = pd.DataFrame({"round": ["batch2", "stents"], "category": ["drug", "stent"], "mean": [0.5, 0.9],
                      "ci_low": [0.45, 0.88], "ci_high": [0.55, 0.93], "published": [0.53, np.nan]})
    ax = plots.plot_round_cuts(t)
    published = [c for c in ax.collections if c.get_label() == "published"]
    assert len(published) == 1 and published[0].get_offsets().tolist() == [[0.0, 0.53]]
    assert [tl.get_text() for tl in ax.get_xticklabels()] == ["batch2", "stents"]
    assert ax.get_ylabel() == "average price cut (%)"
    plt.close(ax.figure)


def test_validation_shows_published_points_intervals_and_forecasts():
    ax = plots.plot_validation(pd.DataFrame(LORO), pd.DataFrame(ROLLING))
    published = [c for c in ax.collections if c.get_label() == "published"]
    assert len(published) == 1
    assert published[0].get_offsets().tolist() == [[0.0, 0.52], [1.0, 0.53], [2.0, 0.53]]
    (bars,) = ax.containers[0].lines[2]
    extents = np.array([sorted(seg[:, 1]) for seg in bars.get_segments()])
    assert extents == pytest.approx(np.array([[r["pi_low"], r["pi_high"]] for r in LORO]))
    assert ax.yaxis.get_major_formatter()(0.375, 0) == "37.5%"
    rolling = [c for c in ax.collections if c.get_label() == "rolling origin"]
    assert np.asarray(rolling[0].get_offsets()) == pytest.approx(np.array([[2.15, 0.513]]))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "published", "round left out (95% PI)", "rolling origin"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pilot", "batch2", "batch3"]
    assert ax.get_title() == "Out of sample: drug average cuts"
    plt.close(ax.figure)
    ax = plots.plot_validation(pd.DataFrame(LORO).drop(columns=["pi_low", "pi_high"]), None)
    assert ax.containers[0].lines[0].get_ydata().tolist() == [r["predicted"] for r in LORO]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["published", "round left out (95% PI)"]
    plt.close(ax.figure)


def test_bid_ratios_known_answer():
    bids = pd.DataFrame({"rep": 0, "round": ["b"] * 4 + ["c"] * 3, "unit": [0] * 4 + [0] * 3,
                         "bid": [2.0, 3.6, 5.0, np.nan, 1.0, 1.0, 4.0], "ceiling": 10.0,
                         "won": [True, True, False, False, True, True, False]})
    r = plots.bid_ratios(bids)
    assert r["to_anchor"].tolist() == pytest.approx([1.0, 1.8, 2.5, 1.0, 1.0, 4.0])
    assert r["to_ceiling"].tolist() == pytest.approx([0.2, 0.36, 0.5, 0.1, 0.1, 0.4])
    # an anchor factor (batch 11): anchor = max(lowest, factor x mean valid bid) = max(1, 0.9 x 2) = 1.8
    r11 = plots.bid_ratios(bids, {"c": 0.9})
    assert r11[r11["round"] == "c"]["to_anchor"].tolist() == pytest.approx([1 / 1.8, 1 / 1.8, 4 / 1.8])


def test_bids_validity_follows_the_rulebook(run_dir):
    b, gates, _ = report._bids(report.load_results(run_dir))
    drug = b[b["round"] == "batch2"]
    assert not drug.loc[drug["bid"] > drug["ceiling"], "valid"].any()  # ceiling is a cap for drugs
    assert gates == {"batch2": 1.8, "stents": 1.8}


def test_winners_cap_line_is_min_of_cap_and_n():
    units = pd.DataFrame({"n_valid": [0, 1, 3, 8, 8], "n_winners": [0, 1, 2, 6, 6]})
    ax = plots.plot_winners(units, (1, 2, 2, 3, 4, 5, 6))
    line = ax.get_lines()[0]
    assert line.get_ydata()[:10].tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 6, 6]
    sizes = ax.collections[0].get_sizes()
    assert sizes.max() > sizes.min()  # the (8, 6) point counts two units
    plt.close(ax.figure)


def test_response_band_known_answer(sweep_dir):
    d = report._sweep(report.load_results(sweep_dir))
    b = plots.band(d["avg_cut.batch2"], d["rules.volume_share_4plus"])
    assert b["mean"].tolist() == pytest.approx([0.52, 0.54, 0.56])
    assert b["n"].tolist() == [6, 6, 6]  # the failed task is left out
    assert (b["lo"] <= b["mean"]).all() and (b["mean"] <= b["hi"]).all()


def test_response_handles_categorical_and_many_valued_parameters():
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"rule": rng.choice(["batch4_9", "batch10", "batch11"], 60), "x": rng.uniform(0, 1, 60)})
    d["drug_avg_cut"] = 0.4 + 0.1 * d["x"]
    ax = plots.plot_response(d, "rule", "drug_avg_cut")
    assert len(ax.get_xticklabels()) == 3
    plt.close(ax.figure)
    ax = plots.plot_response(d, "x", "drug_avg_cut", bins=5)
    assert len(ax.get_lines()[0].get_xdata()) == 5  # 60 distinct values binned into 5
    plt.close(ax.figure)


def test_heatmap_cells_are_means(sweep_dir):
    d = report._sweep(report.load_results(sweep_dir))
    ax = plots.plot_heatmap(d, "rules.volume_share_4plus", "rules.gate_ratio", "avg_cut.batch2")
    z = ax.collections[0].get_array().reshape(2, 3)
    assert z[0].tolist() == pytest.approx([0.52, 0.54, 0.56])
    assert [t.get_text() for t in ax.texts][:3] == ["52.0%", "54.0%", "56.0%"]
    plt.close(ax.figure)


def test_sobol_and_counterfactual_values(sweep_dir):
    sw = report.load_results(sweep_dir)
    ax = plots.plot_sobol(sw.table("sobol.csv"), "drug_avg_cut")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["market.completion_ratio", "agents.markup"]
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)
    assert widths == [0.2, 0.3, 0.6, 0.7]
    plt.close(ax.figure)
    ax = plots.plot_counterfactual(sw.table("counterfactual.csv"), "drug_avg_cut")
    assert ax.get_xlabel() == "difference from baseline (percentage points)"
    assert any("41.0% → 45.1%" in t.get_text() for t in ax.texts)
    plt.close(ax.figure)


# --- formats and style -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=-1e7, max_value=1e7, allow_nan=False))
def test_money_format_has_thousands_separators(v):
    text = style.fmt_bn(v)
    assert text.startswith("¥") and text.endswith(" bn")
    digits = text[1:-3].lstrip("-").split(".")[0]
    assert all(len(g) == 3 for g in digits.split(",")[1:]) and len(digits.split(",")[0]) <= 3
    # one decimal shown: off by at most half its last digit (1.25 may show as 1.2)
    assert float(text[1:-3].replace(",", "")) == pytest.approx(v, abs=0.05 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=-2, max_value=2, allow_nan=False))
def test_percent_format_round_trips(v):
    assert float(style.fmt_pct(v)[:-1]) == pytest.approx(100 * v, abs=0.05)


def test_missing_values_print_as_dash():
    assert style.fmt_pct(float("nan")) == style.fmt_bn(None) == style.fmt_num(float("inf")) == "—"
    assert style.fmt_num(1234567) == "1,234,567"


@pytest.mark.parametrize("name, unit, label", [
    ("drug_avg_cut", "pct", "average cut, drugs (%)"),
    ("cumulative_savings_2021_bn", "bn", "realised savings to end-2021 (CNY bn)"),
    ("annual_savings_bn.batch7", "bn", "annual savings, batch7 (CNY bn)"),
    ("winner_share.batch2", "pct", "winner share, batch2 (%)"),
    ("winning_products.batch2", "count", "winning products, batch2"),
])
def test_metric_units_and_labels(name, unit, label):
    assert style.metric_unit(name) == unit
    assert style.metric_label(name) == label


def test_palette_is_distinct_and_style_is_scoped():
    assert len(set(style.CYCLE)) == len(style.CYCLE) == 8
    before = dict(matplotlib.rcParams)
    with style.context():
        assert matplotlib.rcParams["font.size"] == style.FONT_PT
    ax = plots.plot_round_cuts(pd.DataFrame({"round": ["a"], "mean": [0.5], "ci_low": [0.4],
                                             "ci_high": [0.6], "published": [0.5]}))
    plt.close(ax.figure)
    after = dict(matplotlib.rcParams)
    assert {k: v for k, v in after.items() if before.get(k) != v and k != "backend"} == {}
