"""`vbp designs`: the rulebook beside the planner's cost-optimal designs, with shortage risk.

The command loads, runs through `vbp.designs` and prints or writes; errors surface as InputError
(exit 2) or SimulationError (exit 1) through the main CLI group.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["designs_command"]


def _cell(mean: float, lo: float, hi: float, pct: bool) -> str:
    if mean != mean:  # nan
        return ""
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:,.2f}")
    return f"{f(mean)} [{f(lo)}, {f(hi)}]"


_PCT = {"cost_of_rules", "price_ratio", "top_share", "shortage_share", "backup_share"}


@click.command(name="designs")
@click.argument("scenario", default="national-history-dynamics")
@click.option("--replications", "-n", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=20181206, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=None, help="Worker processes.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field (all designs).")
@click.option("--design", "designs", multiple=True, type=click.Choice(["planner", "planner_secure"]),
              help="Planner design to compare with the rules (repeatable; default: both).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON document.")
@click.option("--out", type=click.Path(file_okay=False), help="Write designs.csv and manifest.json here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def designs_command(scenario, replications, seed, workers, overrides, designs, as_json, out, quiet):
    """Cost of the rules vs the cost-optimal design, and the shortage risk of each (drug rounds).

    Runs SCENARIO (default: national-history-dynamics) under its rulebooks and in planner mode,
    with the same seed: `planner` picks winners at least cost, `planner_secure` under supply
    security (2+ winners, none above 70%, N-1 backup). Bids are held at those made under the rules.
    """
    from vbp.cli import _progress
    from vbp.designs import DESIGN_METRICS, run_designs
    from vbp.output import atomic_write_text, prepare_out_dir, versions, write_failure

    if out:
        prepare_out_dir(out)
    bar, update = _progress(quiet)
    kwargs = dict(overrides=overrides, designs=tuple(dict.fromkeys(designs)) or ("planner", "planner_secure"),
                  replications=replications, seed=seed, workers=workers, progress=update)
    if bar:
        with bar:
            runs, table = run_designs(scenario, **kwargs)
    else:
        runs, table = run_designs(scenario, **kwargs)
    if out:
        path = Path(out)
        manifest = {"kind": "designs", "scenario": scenario,
                    "scenario_sha256": {k: r.scenario.digest() for k, r in runs.items()},
                    "seed": seed, "replications": replications, "versions": versions(),
                    "metrics": {"cost_of_rules": "rules' drug price ratio / the design's - 1", **DESIGN_METRICS}}
        for name, text in (("designs.csv", table.to_csv(index=False)),
                           ("manifest.json", json.dumps(manifest, indent=2) + "\n")):
            try:
                atomic_write_text(path / name, text)
            except OSError as exc:
                raise write_failure(exc, path / name) from None
    if as_json:
        doc = {"scenario": scenario, "seed": seed, "replications": replications,
               "rows": json.loads(table.to_json(orient="records"))}
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    names = list(runs)
    t = Table(title=f"{scenario}: rules vs planner, drug rounds ({replications} replications, seed {seed}); "
                    "mean [95% interval]; planner - rules difference [95% CI]")
    t.add_column("metric")
    for name in names:
        t.add_column(name, justify="right")
    for name in names[1:]:
        t.add_column(f"{name} - rules", justify="right")
    for metric in dict.fromkeys(table["metric"]):
        sub = table[table["metric"] == metric].set_index("design")
        pct = metric in _PCT
        cells = [_cell(*sub.loc[n, ["mean", "ci_low", "ci_high"]], pct) if n in sub.index else "" for n in names]
        diffs = [_cell(*sub.loc[n, ["diff_mean", "diff_ci_low", "diff_ci_high"]], pct) if n in sub.index else ""
                 for n in names[1:]]
        if metric == "cost_of_rules":
            cells = [""] + [_cell(*sub.loc[n, ["mean", "ci_low", "ci_high"]], True) for n in names[1:]]
        t.add_row(metric, *cells, *diffs)
    Console(width=max(160, Console().width)).print(t)
    if out:
        click.echo(f"wrote {out}")
