"""Render reference pages from the code, so they are never retyped.

`python -m vbp.clidoc > docs/cli.md` regenerates the command reference (from the click objects);
`python -m vbp.clidoc outputs > docs/outputs.md` the output tables' columns (from vbp/records.py
and vbp/metrics.py) and the --json documents' keys (from vbp/forecast.py and vbp/cli.py). Tests
check both files are current.
"""

from __future__ import annotations

import inspect
import re
import sys

import click

from vbp.cli import cli

__all__ = ["render", "render_outputs"]


def _walk(cmd: click.Command, path: list[str], parent: click.Context | None = None):
    ctx = click.Context(cmd, info_name=path[-1], parent=parent, **(cli.context_settings if parent is None else {}))
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], [*path, name], ctx)


def render() -> str:
    """Markdown reference of every command, its arguments and options."""
    lines = ["# Command reference", "",
             "Generated from the command definitions by `python -m vbp.clidoc`; do not edit by hand.", ""]
    for path, cmd, ctx in _walk(cli, ["vbp"]):
        lines += [f"## `{' '.join(path)}`", "", "```", cmd.get_usage(ctx), "```", ""]
        if cmd.help:  # cleandoc: Python 3.13 dedents docstrings itself, 3.11 and 3.12 do not
            lines += [inspect.cleandoc(cmd.help), ""]
        rows = []
        for p in cmd.get_params(ctx):
            if isinstance(p, click.Argument):
                rows.append((p.human_readable_name, "argument", ""))
                continue
            record = p.get_help_record(ctx)
            if record:
                rows.append((record[0].replace("|", "\\|"), "option", record[1].replace("|", "\\|")))
        if rows:
            lines += ["| name | kind | meaning |", "|---|---|---|"]
            lines += [f"| `{n}` | {k} | {h} |" for n, k, h in rows]
            lines.append("")
    return "\n".join(lines)


def _fields(cls) -> list[tuple[str, str, str]]:
    """(name, type, comment) of a NamedTuple's fields, read from its source."""
    rows = []
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): ([\w\[\], |]+?)\s*(?:#\s*(.*))?$", line)
        if m and m.group(1) in cls._fields:
            rows.append((m.group(1), m.group(2), m.group(3) or ""))
    return rows


def render_outputs() -> str:
    """Markdown reference of the tables a run writes with --out, and of the --json documents."""
    from vbp import metrics, records

    lines = ["# Output tables", "",
             "Generated from `vbp/records.py` and `vbp/metrics.py` by `python -m vbp.clidoc outputs`; "
             "do not edit by hand. `vbp reproduce`, `vbp run` and `vbp forecast` with `--out DIR` write these "
             "tables (Parquet for records, CSV for summaries) plus `summary.json`, `scenario.toml` (the "
             "scenario fully resolved, calibrated values and `--set` overrides included: `vbp run "
             "DIR/scenario.toml --seed SEED -n N` replays the run) and `manifest.json` (scenario sha256, "
             "seed, replications, library versions, command). Sweep folders are described in "
             "[sweeps.md](sweeps.md).", ""]
    for name, cls, doc in (("bids.parquet", records.BidRow, "one row per bid (product) in every unit"),
                           ("units.parquet", records.UnitRow, "one row per molecule or device unit"),
                           ("tenders.parquet", records.TenderRow,
                            "one row per tender of a unit: the round's award and each re-tender"),
                           ("deliveries.parquet", records.DeliveryRow, "one row per round and month of supply"),
                           ("events.parquet", records.EventRow, "the SimPy timeline, one row per event")):
        lines += [f"## `{name}`", "", doc[0].upper() + doc[1:] + ".", "", "| column | type | meaning |",
                  "|---|---|---|"]
        lines += [f"| `{f}` | {t} | {c} |" for f, t, c in _fields(cls)]
        lines.append("")
    lines += ["## `round_metrics.csv`", "", "One row per replication and round.", "",
              "| column | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in metrics.ROUND_METRIC_COLUMNS.items()]
    lines += ["", "## `headline.csv`, `savings_path.csv`, `targets.csv`", "",
              "`headline.csv`: one row per replication, one column per headline target the run allows "
              "(`drug_avg_cut`, `joint_avg_cut`, `stent_avg_cut` as shares; `cumulative_savings_2021_bn` in "
              "CNY bn). `savings_path.csv`: `rep`, `month`, `savings_bn` (cumulative realised savings). "
              "`targets.csv`: published value, simulated mean, 95% interval, tolerance and `ok` per target.", ""]
    from vbp.forecast import JSON_KEYS

    lines += ["## `vbp forecast --json`", "", "One JSON document (also `summary.json` of `vbp forecast --out`).",
              "", "| key | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in JSON_KEYS.items()]
    from vbp.cli import RESULT_JSON_KEYS

    lines += ["", "## `vbp reproduce --json`, `vbp run --json`", "",
              "One JSON document (also `summary.json` of `vbp reproduce --out` and `vbp run --out`). Shares "
              "are fractions, money is CNY bn; a number that could not be computed is null.", "",
              "| key | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in RESULT_JSON_KEYS.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render_outputs() if sys.argv[1:] == ["outputs"] else render(), end="")
