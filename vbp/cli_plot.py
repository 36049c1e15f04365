"""`vbp plot` and `vbp report`: figures and a self-contained report from a results folder.

The commands only load, draw through `vbp.report`/`vbp.plots` and save; matplotlib runs on the
Agg backend (no display needed). Bad input raises InputError, which the CLI turns into exit 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from vbp.errors import InputError

__all__ = ["plot_command", "report_command"]

_KIND_NAMES = ("targets", "cuts", "savings", "validation", "bids", "winners", "response", "heatmap",
               "sobol", "counterfactual")


def _agg() -> None:
    """Draw off-screen: a figure file needs no display."""
    import matplotlib

    matplotlib.use("Agg", force=True)


_metric_option = click.option(
    "--metric", "metrics_wanted", multiple=True, metavar="NAME",
    help="Sweep metric column to draw (repeatable; default: the headline metrics).")


@click.command(name="plot")
@click.argument("results", metavar="RESULTS", type=click.Path())
@click.option("--kind", "kinds", multiple=True, type=click.Choice(_KIND_NAMES),
              help="Figure kind (repeatable; default: every kind that fits RESULTS).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", show_default=True,
              help="File format.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the figures (default: RESULTS/figures).")
@click.option("--dpi", type=click.IntRange(50, 1200), default=300, show_default=True,
              help="Resolution of PNG figures and of rasterised points in PDF/SVG.")
@_metric_option
def plot_command(results, kinds, fmt, out, dpi, metrics_wanted):
    """Draw figures from RESULTS, a folder written by reproduce, run, forecast or sweep with --out."""
    _agg()
    from vbp.output import prepare_out_dir
    from vbp.report import draw, load_results, save_figure

    res = load_results(results)
    drawn = draw(res, tuple(dict.fromkeys(kinds)), tuple(metrics_wanted))
    folder = prepare_out_dir(out or Path(results) / "figures")
    for stem, fig, _ in drawn:
        click.echo(f"wrote {save_figure(fig, folder / f'{stem}.{fmt}', dpi=dpi)}")


@click.command(name="report")
@click.argument("results", metavar="RESULTS", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Report file (default: RESULTS/report.html, or report.md with --format md).")
@click.option("--format", "fmt", type=click.Choice(["html", "md"]), default=None,
              help="html: one self-contained file; md: Markdown plus a figures folder beside it "
                   "(default: from the --out suffix, else html).")
@_metric_option
def report_command(results, out, fmt, metrics_wanted):
    """Write a report of RESULTS: manifest, tables and every figure that fits."""
    _agg()
    from vbp.output import atomic_write_text, prepare_out_dir
    from vbp.report import build_report, load_results, render_html, render_markdown

    fmt = fmt or ("md" if out and Path(out).suffix.lower() in (".md", ".markdown") else "html")
    path = Path(out) if out else Path(results) / f"report.{fmt}"
    if path.is_dir():
        raise InputError("expected a file name for the report, got a folder", field="--out", value=str(path))
    res = load_results(results)
    blocks = build_report(res, metrics_wanted=tuple(metrics_wanted))
    prepare_out_dir(path.parent)
    if fmt == "html":
        atomic_write_text(path, render_html(blocks))
    else:
        atomic_write_text(path, render_markdown(blocks, path.parent / "figures", "figures/"))
    click.echo(f"wrote {path}")
