"""Reports: one self-contained HTML file (or Markdown plus figures) from run, forecast and sweep folders.

Run and forecast folders come from the CLI on small inputs (cost_plus strategy, two replications);
sweep folders are the synthetic ones of test_plots.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from test_plots import invoke, ok, write_sweep

from vbp import report

FORECAST = str(Path(__file__).parent.parent / "experiments" / "forecasts" / "batch10.toml")
IMG = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def forecast_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fc") / "F"
    ok(invoke("forecast", FORECAST, "-n", "2", "--workers", "1", "--quiet",
              "--set", "agents.strategy=cost_plus", "--out", str(out)))
    return out


def images(text: str) -> dict[str, bytes]:
    return {name: base64.b64decode(data) for name, data in IMG.findall(text)}


def assert_self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    for banned in ("<script", "<link", "<iframe", "src=\"http", "url(", "@import"):
        assert banned not in text.lower(), banned
    assert "http://" not in text and "https://" not in text


def test_readme_pipeline_run_plot_report(run_dir, tmp_path):
    """run --out R && plot R --out F && report R --out F/report.html."""
    fig_dir = tmp_path / "F"
    ok(invoke("plot", str(run_dir), "--out", str(fig_dir)))
    result = invoke("report", str(run_dir), "--out", str(fig_dir / "report.html"))
    ok(result)
    text = (fig_dir / "report.html").read_text(encoding="utf-8")
    assert_self_contained(text)
    imgs = images(text)
    assert sorted(imgs) == sorted(p.stem for p in fig_dir.glob("*.png"))
    for png in imgs.values():
        assert png.startswith(b"\x89PNG") and len(png) > 8_000


def test_html_report_holds_manifest_and_tables(run_dir, tmp_path):
    ok(invoke("report", str(run_dir), "--out", str(tmp_path / "r.html")))
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    manifest = report.load_results(run_dir).manifest
    assert manifest["scenario_sha256"] in text
    assert "<title>vbp run: tiny</title>" in text
    for words in ("Published vs simulated", "stent_avg_cut", "Per round", "batch2", "¥260.0 bn",
                  "numpy"):
        assert words in text, words
    assert len(images(text)) == len(report.fitting(report.load_results(run_dir))) == 5


def test_report_default_out_and_markdown(run_dir):
    ok(invoke("report", str(run_dir)))
    assert (run_dir / "report.html").is_file()
    ok(invoke("report", str(run_dir), "--format", "md"))
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5
    for link in links:
        png = run_dir / link
        assert png.is_file() and png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 8_000
    assert "| target | published |" in md and "## Manifest" in md


def test_markdown_format_is_inferred_from_suffix(run_dir, tmp_path):
    ok(invoke("report", str(run_dir), "--out", str(tmp_path / "sub" / "notes.md")))
    assert (tmp_path / "sub" / "notes.md").read_text(encoding="utf-8").startswith("# vbp run: tiny")
    assert (tmp_path / "sub" / "figures" / "cuts.png").is_file()


def test_forecast_report(forecast_dir, tmp_path):
    ok(invoke("report", str(forecast_dir), "--out", str(tmp_path / "f.html")))
    text = (tmp_path / "f.html").read_text(encoding="utf-8")
    assert "Forecast of batch10" in text and "annual_savings_bn" in text
    assert sorted(images(text)) == ["bids", "cuts", "savings", "winners"]  # no published targets
    assert_self_contained(text)


def test_sweep_report(tmp_path):
    folder = write_sweep(tmp_path / "S")
    ok(invoke("report", str(folder), "--out", str(tmp_path / "s.html")))
    text = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert_self_contained(text)
    for words in ("6 design points, 19 tasks, 1 failed", "Failed tasks", "solver failed",
                  "Sobol indices", "0.600 ± 0.050", "Counterfactuals", "single_winner", "45.1%", "+4.1 pts",
                  "+15.8 bn"):
        assert words in text, words
    assert len(images(text)) == 5


def test_sweep_report_metric_option(tmp_path):
    folder = write_sweep(tmp_path / "S", sobol=False, counterfactual=False)
    ok(invoke("report", str(folder), "--metric", "avg_cut.batch2", "--out", str(tmp_path / "s.md")))
    md = (tmp_path / "s.md").read_text(encoding="utf-8")
    assert "average cut, batch2 (mean)" in md and "average cut, drugs (mean)" not in md


def test_report_escapes_text(tmp_path):
    folder = write_sweep(tmp_path / "S", sobol=False)
    import pandas as pd

    t = pd.read_csv(folder / "counterfactual.csv")
    t.loc[0, "variant"] = "<b>odd & name</b>"
    t.to_csv(folder / "counterfactual.csv", index=False)
    html = report.render_html(report.build_report(report.load_results(folder)))
    assert "&lt;b&gt;odd &amp; name&lt;/b&gt;" in html and "<b>odd" not in html


@pytest.mark.parametrize("make, words", [
    (lambda p: p, "no manifest.json"),
    (lambda p: p / "missing", "no such results folder"),
])
def test_report_bad_results_exit_2(tmp_path, make, words):
    result = invoke("report", str(make(tmp_path)))
    assert result.exit_code == 2 and words in result.output


def test_report_out_is_a_folder_exit_2(run_dir, tmp_path):
    result = invoke("report", str(run_dir), "--out", str(tmp_path))
    assert result.exit_code == 2 and "--out" in result.output


def test_unknown_results_kind_exit_2(tmp_path):
    (tmp_path / "manifest.json").write_text('{"kind": "calibration"}')
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 2 and "unknown results kind 'calibration'" in result.output
