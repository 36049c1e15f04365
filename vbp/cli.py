"""Command line: a thin click layer over the library.

Errors are translated in one place (`VbpGroup.invoke`): bad input prints one readable message and
exits 2, runtime failures exit 1, and the traceback appears only with `--debug` (which keeps the
exit codes).
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path

import click
import pandas as pd

from vbp import __version__, data
from vbp.errors import InputError, SimulationError
from vbp.scenario import flatten, load_raw, load_scenario, parse_override, read_toml_file

__all__ = ["main", "cli"]

HEADLINE = "national-history"


class VbpGroup(click.Group):
    """Click group that turns vbp's errors into messages and exit codes."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except InputError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except SimulationError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"simulation failed: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; files already written are complete", err=True)
            ctx.exit(130)


@click.group(cls=VbpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbp")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Simulate China's national volume-based procurement (VBP) rounds."""


WORKERS_HELP = ("Worker processes (default: all cores this process may use, at most one per "
                "replication).")


def _common(f):
    """Options shared by the commands that simulate."""
    f = click.option("--quiet", is_flag=True, help="No progress bar.")(f)
    f = click.option("--uncalibrated", is_flag=True,
                     help="Use the prior parameter values, not seeds/calibration.toml.")(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(f)
    f = click.option("--resume", is_flag=True,
                     help="Reuse the replications an interrupted run saved in --out (same scenario, --set, "
                          "seed and version; refused otherwise) and run only the missing ones. Without it, "
                          "a run starts afresh and discards the replications saved there.")(f)
    f = click.option("--out", type=click.Path(file_okay=False),
                     help="Write tables and a manifest here; each replication is saved as it finishes.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
                     help="Override a scenario field by dotted path (repeatable); see `vbp params`.")(f)
    f = click.option("--workers", type=click.IntRange(1, 256), default=None, help=WORKERS_HELP)(f)
    f = click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=20181206, show_default=True,
                     help="Root random seed.")(f)
    f = click.option("--replications", "-n", type=click.IntRange(1, 100000), default=10, show_default=True,
                     help="Replications (independent simulated histories).")(f)
    return f


def _progress(quiet: bool):
    """A progress callback drawing a bar on stderr, or None when quiet or not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("replications"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeRemainingColumn(), console=_stderr_console(), transient=True)
    task = bar.add_task("run", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _simulate(scenario_ref, overrides, replications, seed, workers, quiet, uncalibrated=False, *,
              out=None, resume=False, kind="run"):
    """Load the scenario and run it; with `out`, save each replication in out/.parts as it finishes
    and, with `resume`, reuse the ones saved there (checked against the run's spec first)."""
    from vbp import output
    from vbp.experiment import run

    if resume and not out:
        raise click.UsageError("--resume needs --out DIR: the folder whose saved replications to reuse")
    if out:
        output.prepare_out_dir(out)  # an unwritable folder stops the command before any work
    scenario = load_scenario(scenario_ref, overrides, calibrated=not uncalibrated)
    kwargs = {"replications": replications, "seed": seed, "workers": workers}
    parts = None
    if out:
        parts = output.open_parts(Path(out), output.run_spec(kind, scenario, seed), resume=resume)
        kwargs["saved"] = output.load_parts(parts, replications) if resume else ()
        kwargs["on_part"] = lambda p: output.save_part(parts, p.rep, p.frames, p.timing, total=replications)
    bar, update = _progress(quiet)
    try:
        if bar:
            with bar:
                return run(scenario, progress=update, **kwargs)
        return run(scenario, **kwargs)
    except KeyboardInterrupt:
        if parts is not None:
            click.echo(f"{output.count_parts(parts, replications)} of {replications} replications are saved "
                       f"in {out}; rerun the same command with --resume to continue", err=True)
        raise


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _validation(result, rm: pd.DataFrame) -> dict:
    """The checks beside the tables, computed once per command: savings path and groups (from the
    run's round metrics `rm`), leave-one-round-out, market dynamics."""
    from vbp import metrics

    return {"savings_path": metrics_savings(result), "savings_groups": metrics.savings_groups(rm),
            "loro": calibrated_loro(), "rolling": calibrated_rolling(),
            "refit_control": _refit_control(), "dynamics": dynamics_summary(result)}


def _refit_control() -> dict | None:
    """The stored control refit (nothing left out), with the calibration's own drug objective beside it."""
    doc = _calibration_doc()
    if "refit_control" not in doc:
        return None
    return {**doc["refit_control"], "calibration_objective": doc.get("fit", {}).get("drug", {}).get("objective")}


def drug_cut_mae(result, per_round) -> dict | None:
    """In-sample mean absolute error of the drug rounds' average cuts (published ones only)."""
    drugs = {r.id for r in result.scenario.rounds if r.category == "drug"}
    errs = {r["round"]: r["avg_cut"] - r["published_avg_cut"] for r in per_round
            if r["round"] in drugs and r["published_avg_cut"] is not None and math.isfinite(r["avg_cut"])}
    if not errs:
        return None
    return {"rounds": sorted(errs), "mae": sum(abs(e) for e in errs.values()) / len(errs)}


# The `vbp reproduce --json` / `vbp run --json` document, key by key (docs/outputs.md is rendered from it).
ROUND_STATS = ("procured", "winning_products", "winning_firms", "winner_share", "annual_savings_bn", "max_cut")
RESULT_JSON_KEYS = {
    "drug_cut_mae": "in-sample mean absolute error of the drug rounds' average cuts: `rounds` (those with a "
                    "published cut), `mae` (share); null when no drug round has one",
    "targets": "the headline targets the run allows, one object each: `name`, `published`, `mean`, `ci_low`, "
               "`ci_high` (95% over replications), `tolerance`, `ok` (mean within tolerance)",
    "rounds": "one object per round, in run order: `round`; the average cut's `published` (null if none), "
              "`mean`, `ci_low`, `ci_high`; and " + ", ".join(f"`{s}`" for s in ROUND_STATS)
              + ", each an object `mean`, `ci_low`, `ci_high`, `published` (null if none); columns as in "
                "`round_metrics.csv`",
    "savings_path": "realised cumulative savings at the dates of the official statements (national history "
                    "only, else empty): `date`, `published`, `scope`, `mean`, `ci_low`, `ci_high`, `error_pct`",
    "annual_savings_groups": "published first-year savings of groups of rounds beside the simulated sum over "
                             "them: `name`, `rounds`, `published`, `mean`, `ci_low`, `ci_high`, `error_pct`",
    "loro": "leave-one-round-out checks stored by `vbp calibrate` (empty before one), per drug round: the "
            "average cut's `published`, `predicted`, `error`, its 95% predictive interval `pi_low`, `pi_high` "
            "and `covered`; the refit (`refit`, `objective`, `params`, ...); `winner_share_*` likewise",
    "rolling_origin": "rolling-origin forecasts stored by `vbp calibrate`: per round `trained_on` (earlier "
                      "rounds), `published`, `predicted`, `error`, and `winner_share_*` likewise",
    "refit_control": "the stored control refit with no round left out (`params`, `objective`, `avg_cut_mae`, "
                     "...) and `calibration_objective`; null before a calibration",
    "dynamics": "market dynamics over the drug rounds (each metric's `mean`, `ci_low`, `ci_high`); null "
                "unless `market.renewal = \"retender\"` or `dynamics.supply` is on",
    "scenario": "the scenario's name",
    "scenario_sha256": "digest of the resolved scenario (calibrated values and `--set` included)",
    "replications": "replications simulated",
    "seed": "the root seed",
    "version": "vbp version",
    "wall_s": "wall time of the simulation, seconds",
    "solve_s": "optimizer time summed over replications, seconds",
}


def _round_json(r: dict) -> dict:
    """One round of the JSON document: the average cut as before, then each other statistic of the
    per-round table with its interval and published value."""
    row = {"round": r["round"], "published": _finite(r["published_avg_cut"]), "mean": _finite(r["avg_cut"]),
           "ci_low": _finite(r["avg_cut_ci"][0]), "ci_high": _finite(r["avg_cut_ci"][1])}
    for col in ROUND_STATS:
        row[col] = {"mean": _finite(r[col]), "ci_low": _finite(r[col + "_ci"][0]),
                    "ci_high": _finite(r[col + "_ci"][1]), "published": _finite(r.get("published_" + col))}
    return row


def _result_json(result, rows, per_round, checks: dict) -> dict:
    return {
        "drug_cut_mae": checks["drug_cut_mae"],
        "targets": [{k: _finite(r[k]) for k in ("name", "published", "mean", "ci_low", "ci_high",
                                                 "tolerance", "ok")} for r in rows],
        "rounds": [_round_json(r) for r in per_round],
        "savings_path": [{k: _finite(v) for k, v in r.items()} for r in checks["savings_path"]],
        "annual_savings_groups": [{k: _finite(v) for k, v in r.items()} for r in checks["savings_groups"]],
        "loro": checks["loro"],
        "rolling_origin": checks["rolling"],
        "refit_control": checks["refit_control"],
        "dynamics": checks["dynamics"],
        "scenario": result.scenario.name,
        "scenario_sha256": result.scenario.digest(),
        "replications": result.replications,
        "seed": result.seed,
        "version": __version__,
        "wall_s": round(result.wall_s, 3),
        "solve_s": round(result.solve_s, 3),
    }


def metrics_savings(result) -> list[dict]:
    """The savings path beside the official statements, for scenarios holding the whole history."""
    from vbp import metrics

    history = {r.id for r in load_scenario(HEADLINE).rounds}
    if not history <= {r.id for r in result.scenario.rounds}:
        return []
    return metrics.savings_checkpoints(result.frames["deliveries"])


def dynamics_summary(result) -> dict | None:
    """Market dynamics over the drug rounds (mean and 95% interval of each), when switched on."""
    from vbp import metrics

    sc = result.scenario
    if sc.market.renewal != "retender" and not sc.dynamics.supply:
        return None
    drugs = [r.id for r in sc.rounds if r.category == "drug"]
    dm = metrics.dynamics_metrics(result.frames, drugs)
    return {col: {k: _finite(v) for k, v in metrics.summarize(dm[col]).items() if k != "n"}
            for col in metrics.DYNAMICS_METRIC_COLUMNS}


def _calibration_doc() -> dict:
    try:
        return data.read_toml("calibration.toml")
    except FileNotFoundError:
        return {}


def calibrated_loro() -> list[dict]:
    """Leave-one-round-out errors stored by `vbp calibrate` (empty before any calibration), each with
    its out-of-sample 95% predictive interval and whether it covers the published cut, when stored;
    and the same refit's winner share (`winner_share_*` keys) where the round published one."""
    doc = _calibration_doc()
    me = doc.get("model_error", {})
    checks = {r["round"]: r for r in me.get("rounds", [])}
    shares = {r["round"]: r for r in doc.get("loro_winner_share", [])}
    share_checks = {r["round"]: r for r in me.get("winner_share", {}).get("rounds", [])}
    out = []
    for r in doc.get("loro", []):
        i = r["round"]
        row = {**r, **{k: checks[i][k] for k in ("pi_low", "pi_high", "covered") if k in checks.get(i, {})}}
        if i in shares:
            row.update({f"winner_share_{k}": shares[i][k] for k in ("published", "predicted", "error")})
            row.update({f"winner_share_{k}": share_checks[i][k] for k in ("pi_low", "pi_high", "covered")
                        if k in share_checks.get(i, {})})
        out.append(row)
    return out


def calibrated_rolling() -> list[dict]:
    """Rolling-origin forecasts stored by `vbp calibrate`: each drug round predicted from a fit to the
    earlier rounds only, one row per round with its average cut and winner share."""
    rows: dict[str, dict] = {}
    for r in _calibration_doc().get("rolling", []):
        row = rows.setdefault(r["round"], {"round": r["round"], "trained_on": r["trained_on"]})
        prefix = "" if r["stat"] == "avg_cut" else f"{r['stat']}_"
        row.update({f"{prefix}{k}": r[k] for k in ("published", "predicted", "error")})
    return list(rows.values())


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "bn":
        return f"¥{value:,.1f} bn"
    if kind == "x3":
        return f"{value:.3f}"
    return f"{value:,.1f}"


def _pi(r: dict, prefix: str = "") -> str:
    if f"{prefix}pi_low" not in r:
        return ""
    return f"{_fmt(r[prefix + 'pi_low'], 'pct')} – {_fmt(r[prefix + 'pi_high'], 'pct')}"


def _covers(r: dict, prefix: str = "") -> str:
    key = f"{prefix}covered"
    return ("yes" if r[key] else "NO") if key in r else ""


def _share_cells(r: dict) -> tuple[str, str]:
    """'predicted [published]' and the error of a row's winner share, blank when it has none."""
    if "winner_share_predicted" not in r:
        return "", ""
    return (f"{_fmt(r['winner_share_predicted'], 'pct')} [{_fmt(r['winner_share_published'], 'pct')}]",
            f"{100 * r['winner_share_error']:+.1f} pts")


def _print_tables(result, rows, per_round, checks: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(130, Console().width))
    t = Table(title=f"{result.scenario.name}: published vs simulated "
                    f"({result.replications} replications, seed {result.seed})")
    for col in ("target", "published", "simulated mean", "95% interval", "tolerance", "within?"):
        t.add_column(col, justify="left" if col == "target" else "right")
    for r in rows:
        kind = "bn" if r["name"].endswith("_bn") else "pct"
        t.add_row(r["name"], _fmt(r["published"], kind), _fmt(r["mean"], kind),
                  f"{_fmt(r['ci_low'], kind)} – {_fmt(r['ci_high'], kind)}",
                  ("±" + _fmt(r["tolerance"], kind)), "yes" if r["ok"] else "NO")
    for r in per_round:
        t.add_row(f"avg cut: {r['round']}", _fmt(r["published_avg_cut"], "pct"), _fmt(r["avg_cut"], "pct"),
                  f"{_fmt(r['avg_cut_ci'][0], 'pct')} – {_fmt(r['avg_cut_ci'][1], 'pct')}", "", "")
    console.print(t)
    mae = checks["drug_cut_mae"]
    if mae:
        console.print(f"drug rounds' average cuts, in sample: mean absolute error {100 * mae['mae']:.1f} pts "
                      f"over {len(mae['rounds'])} rounds")
    d = Table(title="per round: winners and savings (simulated mean; published in brackets)")
    for col in ("round", "procured", "winning products", "winning firms", "winner share",
                "annual savings", "max cut"):
        d.add_column(col, justify="left" if col == "round" else "right")

    def pair(sim, pub, kind="num"):
        return f"{_fmt(sim, kind)} [{_fmt(pub, kind)}]" if pub is not None else _fmt(sim, kind)

    groups = checks["savings_groups"]
    for r in per_round:
        d.add_row(r["round"], _fmt(r["procured"], "num"),
                  pair(r["winning_products"], r["published_winning_products"]),
                  pair(r["winning_firms"], r["published_winning_firms"]), _fmt(r["winner_share"], "pct"),
                  pair(r["annual_savings_bn"], r["published_annual_savings_bn"], "bn"),
                  pair(r["max_cut"], r["published_max_cut"], "pct"))
        for g in groups:  # a group's published savings, after the last of its rounds
            if g["rounds"][-1] == r["round"]:
                d.add_row(f"  {' + '.join(g['rounds'])}", "", "", "", "",
                          pair(g["mean"], g["published"], "bn"), "")
    console.print(d)
    path = checks["savings_path"]
    if path:
        v = Table(title="validation: realised cumulative savings (not a calibration moment)")
        for col in ("date", "scope", "published", "simulated mean", "95% interval", "error"):
            v.add_column(col, justify="left" if col in ("date", "scope") else "right")
        for r in path:
            v.add_row(r["date"], r["scope"], _fmt(r["published"], "bn"), _fmt(r["mean"], "bn"),
                      f"{_fmt(r['ci_low'], 'bn')} – {_fmt(r['ci_high'], 'bn')}", f"{r['error_pct']:+.0f}%")
        console.print(v)
    dyn = checks["dynamics"]
    if dyn:
        from vbp.metrics import DYNAMICS_METRIC_COLUMNS

        m = Table(title="market dynamics, drug rounds (mean and 95% interval over replications)")
        for col in ("metric", "simulated mean", "95% interval", "meaning"):
            m.add_column(col, justify="right" if col in ("simulated mean", "95% interval") else "left")
        for name, s in dyn.items():
            kind = "pct" if name.endswith(("share", "change", "unprocured")) else "x3" if "hhi" in name else "num"
            m.add_row(name, _fmt(s["mean"], kind), f"{_fmt(s['ci_low'], kind)} – {_fmt(s['ci_high'], kind)}",
                      DYNAMICS_METRIC_COLUMNS[name])
        console.print(m)
    loro = checks["loro"]
    if loro and result.scenario.name == HEADLINE:
        o = Table(title="validation: leave-one-round-out (refit without the round, predict its cut "
                        "and its share of bidding firms that win)")
        for col in ("round", "published", "predicted", "error", "95% predictive interval", "covers",
                    escape("winner share [published]"), "error ", "covers "):
            o.add_column(col, justify="left" if col == "round" else "right")
        for r in loro:
            o.add_row(r["round"], _fmt(r["published"], "pct"), _fmt(r["predicted"], "pct"),
                      f"{100 * r['error']:+.1f} pts", _pi(r), _covers(r), *_share_cells(r),
                      _covers(r, "winner_share_"))
        mae = sum(abs(r["error"]) for r in loro) / len(loro)
        covered = [r["covered"] for r in loro if "covered" in r]
        errs = [abs(r["winner_share_error"]) for r in loro if "winner_share_error" in r]
        share_cov = [r["winner_share_covered"] for r in loro if "winner_share_covered" in r]
        o.add_row("mean absolute error", "", "", f"{100 * mae:.1f} pts", "",
                  f"{sum(covered)} of {len(covered)}" if covered else "", "",
                  f"{100 * sum(errs) / len(errs):.1f} pts" if errs else "",
                  f"{sum(share_cov)} of {len(share_cov)}" if share_cov else "")
        console.print(o)
        if (c := checks["refit_control"]) is not None:
            console.print(f"each refit follows the calibration without its round (a spline refinement, then a "
                          f"trust region of its own) and is simulated at its parameters; the refinement with no "
                          f"round left out misses the drug cuts by {100 * c['avg_cut_mae']:.1f} pts on average "
                          f"(simulated objective {c['objective']:.1f}"
                          + (f"; after the calibration's trust region {c['calibration_objective']:.1f})"
                             if c.get("calibration_objective") is not None else ")"))
    rolling = checks["rolling"]
    if rolling and result.scenario.name == HEADLINE:
        o = Table(title="validation: rolling origin (fit on the earlier rounds only, forecast the next)")
        for col in ("round", "fitted on", "published", "forecast", "error", escape("winner share [published]"),
                    "error "):
            o.add_column(col, justify="left" if col in ("round", "fitted on") else "right")
        for r in rolling:
            o.add_row(r["round"], f"{r['trained_on'][0]} – {r['trained_on'][-1]}", _fmt(r["published"], "pct"),
                      _fmt(r["predicted"], "pct"), f"{100 * r['error']:+.1f} pts", *_share_cells(r))
        mae = sum(abs(r["error"]) for r in rolling) / len(rolling)
        o.add_row("mean absolute error", "", "", "", f"{100 * mae:.1f} pts", "", "")
        console.print(o)
    console.print(f"wall time {result.wall_s:.1f} s on {result.workers} worker(s); "
                  f"optimizer {result.solve_s:.1f} s of replication time")


def _report(result, as_json: bool, out: str | None, kind: str) -> None:
    from vbp import metrics
    from vbp.output import PARTS, prepare_out_dir, write_run

    rm = metrics.round_metrics(result.frames["units"], result.frames["bids"])
    head = metrics.headline_metrics(result.frames)
    rows, per_round = metrics.compare(result.frames, rm, head)
    checks = {**_validation(result, rm), "drug_cut_mae": drug_cut_mae(result, per_round)}
    doc = _result_json(result, rows, per_round, checks)
    if out:
        path = metrics.savings_path(result.frames["deliveries"])
        write_run(prepare_out_dir(out), kind=kind, scenario=result.scenario, seed=result.seed,
                  replications=result.replications, frames=result.frames,
                  tables={"round_metrics": rm, "headline": head.reset_index(), "savings_path": path,
                          "targets": pd.DataFrame(rows)},
                  summary=doc, wall_s=result.wall_s,
                  hint=f"all {result.replications} replications are saved in {Path(out) / PARTS}; rerun the "
                       "same command with --resume to write the tables without simulating again")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_tables(result, rows, per_round, checks)
        if out:
            reused = f" ({result.reused} saved replications reused)" if result.reused else ""
            click.echo(f"wrote {out}{reused}")


@cli.command()
@_common
def reproduce(replications, seed, workers, overrides, out, resume, as_json, quiet, uncalibrated):
    """Simulate the national history and set it beside the published outcomes."""
    result = _simulate(HEADLINE, overrides, replications, seed, workers, quiet, uncalibrated,
                       out=out, resume=resume, kind="reproduce")
    _report(result, as_json, out, "reproduce")


@cli.command(name="run")
@click.argument("scenario")
@_common
def run_cmd(scenario, replications, seed, workers, overrides, out, resume, as_json, quiet, uncalibrated):
    """Simulate SCENARIO (an embedded name or a TOML file)."""
    result = _simulate(scenario, overrides, replications, seed, workers, quiet, uncalibrated,
                       out=out, resume=resume, kind="run")
    _report(result, as_json, out, "run")


@cli.command()
@click.argument("round_file", metavar="ROUND.toml")
@click.option("--replications", "-n", type=click.IntRange(1, 100000), default=20, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=20181206, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=None, help=WORKERS_HELP)
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document on stdout (keys in docs/outputs.md).")
@click.option("--out", type=click.Path(file_okay=False), help="Write tables and a manifest here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def forecast(round_file, replications, seed, workers, overrides, as_json, out, quiet):
    """Predict a round's outcomes from its inputs (ROUND.toml), with 95% intervals.

    ROUND.toml holds one [round] table of the round's inputs only (bid date, molecules, bidding firms
    and products, rulebook, market value, ...), as in experiments/forecasts/ (see docs/tutorial.md and
    docs/validation.md); `vbp check ROUND.toml` validates one. --json prints one document, described
    in docs/outputs.md.
    """
    from vbp.forecast import run_forecast
    from vbp.output import prepare_out_dir, write_run

    if out:
        prepare_out_dir(out)
    bar, update = _progress(quiet)
    if bar:
        with bar:
            result, doc = run_forecast(round_file, replications=replications, seed=seed, workers=workers,
                                       overrides=overrides, progress=update)
    else:
        result, doc = run_forecast(round_file, replications=replications, seed=seed, workers=workers,
                                   overrides=overrides)
    if out:
        from vbp import metrics

        rm = metrics.round_metrics(result.frames["units"], result.frames["bids"])
        write_run(prepare_out_dir(out), kind="forecast", scenario=result.scenario, seed=seed,
                  replications=replications, frames=result.frames, tables={"round_metrics": rm},
                  summary=doc, wall_s=result.wall_s)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"forecast: {doc['round']} ({replications} replications, seed {seed})")
    for col in ("statistic", "mean", "95% interval", "with model error"):
        t.add_column(col, justify="left" if col == "statistic" else "right")
    kinds = {"avg_cut": "pct", "winner_share": "pct", "annual_savings_bn": "bn"}
    for stat in ("avg_cut", "winning_firms", "winning_products", "winner_share", "annual_savings_bn",
                 "procured"):
        k = kinds.get(stat, "num")
        v = doc[stat]
        pi = f"{_fmt(v['pi_low'], k)} – {_fmt(v['pi_high'], k)}" if "pi_low" in v else ""
        t.add_row(stat, _fmt(v["mean"], k), f"{_fmt(v['ci_low'], k)} – {_fmt(v['ci_high'], k)}", pi)
    Console(width=120).print(t)
    if doc.get("model_error_sd") is not None:
        share, sav = doc.get("winner_share_model_error_sd"), doc.get("savings_model_error_sd")
        click.echo(f"95% interval: spread over replications. With model error: adds the calibration's "
                   f"out-of-sample error of the drug average cut (sd {100 * doc['model_error_sd']:.1f} pts)"
                   + (f" and of the winner share (sd {100 * share:.1f} pts)" if share is not None else "")
                   + (f"; the savings also carry their own error beyond the cut's (log sd {sav:.2f}, a "
                      f"factor of {math.exp(1.96 * sav):.1f} either way at 95%)" if sav else "")
                   + "; docs/validation.md.")


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Calibration file to write (default: seeds/calibration.toml in a source checkout, "
                   "else ./calibration.toml).")
@click.option("--replications", "-n", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Replications per design point (the same seeds at every point).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=20181206, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Worker processes (default: all cores this process may use).")
@click.option("--group", "groups", multiple=True, type=click.Choice(["drug", "stent", "joint", "insulin"]),
              help="Calibrate only these parameter groups (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Fit under this setting of a parameter that is not fitted (a model variant; repeatable). "
                   "It is written with the fitted parameters, so the simulation uses both.")
@click.option("--held-out/--no-held-out", default=True, show_default=True,
              help="Refit the drug group with each round left out and on the earlier rounds only, for the "
                   "out-of-sample checks (most of the run time). --no-held-out fits the same parameters and "
                   "records no held-out figures: for quick fits of model variants.")
@click.option("--quiet", is_flag=True, help="No progress output.")
def calibrate(out, replications, seed, workers, groups, overrides, held_out, quiet):
    """Fit the structural parameters to the published moments (simulated method of moments)."""
    import tomli_w

    from vbp import calibrate as cal
    from vbp.experiment import default_workers
    from vbp.output import atomic_write_text

    path = Path(out) if out else _default_calibration_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the folder: {exc.strerror}", field="--out", value=str(path)) from None

    def progress(group, done, total):
        if not quiet:
            click.echo(f"  {group}: {done}/{total} points simulated", err=True)

    fixed = [parse_override(text) for text in overrides]
    # Some groups only, into an existing file: the others' results are kept, so they must have
    # been fitted under the same settings. Checked now, and again on the file as it is at the end.
    partial = bool(groups) and set(groups) != {g.name for g in cal.GROUPS} and path.exists()
    if partial:
        _stored_calibration(path, fixed)
    fits = cal.calibrate(reps=replications, seed=seed, workers=workers or default_workers(),
                         groups=tuple(groups) or None, progress=progress, fixed=fixed, held_out=held_out)
    command = ["vbp", "calibrate", *(f"--group {g}" for g in groups), *(f"--set {t}" for t in overrides),
               f"-n {replications}", f"--seed {seed}"]
    command += [f"--workers {workers}"] if workers else []
    if not held_out:
        command.append("--no-held-out")
    doc = cal.to_toml(fits, command=" ".join(command), seed=seed, reps=replications, fixed=fixed,
                      held_out=held_out)
    if held_out and any(f.group == "drug" for f in fits):
        if not quiet:
            click.echo(f"  model error: {cal.MODEL_ERROR_REPS} replications of the calibrated history", err=True)
        doc["model_error"] = cal.model_error(fits, seed=seed, workers=workers or default_workers(), fixed=fixed)
    if partial:
        old = _stored_calibration(path, fixed)
        old.setdefault("parameters", {}).update(doc["parameters"])
        old.setdefault("fit", {}).update(doc["fit"])
        if "drug" in groups:
            for key in ("loro", "loro_winner_share", "rolling", "refit_control", "model_error"):
                old.pop(key, None)
                if key in doc:
                    old[key] = doc[key]
        old["meta"] = doc["meta"]
        doc = old
    atomic_write_text(path, "# Written by `vbp calibrate`; see docs/validation.md.\n" + tomli_w.dumps(doc))
    for name, fit in doc["fit"].items():
        where = f" ({fit['point']})" if fit.get("point") else ""
        click.echo(f"{name}: objective {fit['objective']}{where}")
        for m in fit["moments"]:
            click.echo(f"  {m['name']:<28} published {m['published']:.3f}  simulated {m['simulated']:.3f}"
                       f"  error {m['error']:+.3f}")
    for k, v in doc["parameters"].items():
        unc = next((f["uncertainty"] for f in doc["fit"].values() if k in f.get("uncertainty", {}).get("low95", {})),
                   None)
        band = f"  (local 95%: {unc['low95'][k]:.4g} – {unc['high95'][k]:.4g})" if unc else ""
        click.echo(f"{k} = {v}{band}")
    click.echo(f"wrote {path}")


def _stored_calibration(path: Path, fixed: list[tuple[str, object]]) -> dict:
    """An existing calibration file whose groups were fitted under the settings `fixed`."""
    old = read_toml_file(path)
    before = old.get("meta", {}).get("fixed", [])
    if not isinstance(before, list) or not all(isinstance(t, str) for t in before):
        raise InputError("expected a list of PATH=VALUE texts", file=str(path), field="meta.fixed", value=before)
    if dict(parse_override(t) for t in before) != dict(fixed):
        raise InputError(f"its other groups were fitted under --set {' '.join(before) or '(none)'}; "
                         "calibrate every group, or give the same --set", file=str(path), field="meta.fixed",
                         value=before)
    return old


def _default_calibration_path() -> Path:
    here = Path(__file__).resolve().parent.parent / "seeds"
    return here / "calibration.toml" if here.is_dir() else Path("calibration.toml")


@cli.group(invoke_without_command=True)
@click.pass_context
def scenarios(ctx):
    """List embedded scenarios and rulebooks."""
    if ctx.invoked_subcommand is None:
        click.echo("embedded scenarios:")
        for name in data.embedded_scenarios():
            raw, _ = load_raw(name)
            click.echo(f"  {name:<24} {raw['description']}")
        click.echo("rulebooks:")
        for name, rb in data.read_toml("rulebooks.toml")["rulebooks"].items():
            click.echo(f"  {name:<12} {rb['kind']:<13} {rb.get('description', '')}")
        click.echo("round ids (use in a scenario's `rounds` list):")
        for rid, r in data.read_toml("rounds.toml")["rounds"].items():
            click.echo(f"  {rid:<12} {r['name']}")


@scenarios.command()
@click.argument("name")
def show(name):
    """Print embedded scenario NAME as TOML, to copy and edit."""
    names = data.embedded_scenarios()
    if name not in names:
        from vbp.errors import did_you_mean

        raise InputError(f"no embedded scenario {name!r}{did_you_mean(name, names)}; embedded: "
                         + ", ".join(names), field="NAME", value=name)
    click.echo((data.scenario_dir() / f"{name}.toml").read_text(encoding="utf-8"), nl=False)


def _is_forecast_file(ref: str) -> bool:
    """A TOML file holding a forecast's `[round]` table (read by `vbp forecast`), not a scenario's
    `rounds` list. Anything unreadable is left to the scenario loader to report."""
    path = Path(ref)
    if ref in data.embedded_scenarios() or not path.is_file():
        return False
    try:
        doc = read_toml_file(path)
    except InputError:
        return False
    return "round" in doc and "rounds" not in doc


@cli.command()
@click.argument("scenario")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a field.")
def check(scenario, overrides):
    """Validate SCENARIO and print a summary, or what is wrong (exit 2).

    SCENARIO is an embedded name, a scenario TOML file, or a forecast round file (a [round] table,
    as `vbp forecast` reads), which is validated as a forecast.
    """
    if _is_forecast_file(scenario):
        from vbp.forecast import load_forecast

        s = load_forecast(scenario, tuple(overrides))
        r = s.rounds[0]

        def opt(value, unit=""):
            return "unset" if value is None else f"{value}{unit}"

        click.echo(f"ok: forecast round file: {r.id} ({r.name}, {r.category}), bid {r.bid_date}, rulebook "
                   f"{r.rulebook}, {r.molecules} molecules/units, bidding firms {opt(r.bidding_firms)}, bidding "
                   f"products {opt(r.bidding_products)}, market value {r.market_value_bn} bn, "
                   + (f"ceiling ratio {r.ceiling_ratio}, " if r.ceiling_ratio is not None else "")
                   + (f"at least {r.min_bidders} bidders per molecule, " if r.min_bidders > 1 else "")
                   + f"cut base {r.cut_base}; horizon {s.start} .. {s.end}, "
                   f"sha256 {s.digest()[:12]}")
        return
    s = load_scenario(scenario, overrides)
    click.echo(f"ok: {s.name}: {len(s.rounds)} rounds "
               f"({s.rounds[0].bid_date} .. {s.rounds[-1].bid_date}), horizon {s.start} .. {s.end}, "
               f"{sum(r.molecules for r in s.rounds)} molecules/units listed, sha256 {s.digest()[:12]}")


@cli.command()
@click.argument("scenario")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {path, default, description}.")
def params(scenario, as_json):
    """List every parameter of SCENARIO that --set and sweeps can change."""
    from vbp.scenario import describe, scenario_from_raw

    raw, label = load_raw(scenario)
    scenario_from_raw(raw, label)  # a scenario that would not run is reported, not listed
    rows = [{"path": p, "default": v, "description": describe(p)} for p, v in flatten(raw)]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        default = "unset" if r["default"] is None else r["default"]
        click.echo(f"{r['path']:<48} {str(default):<24} {r['description']}")


from vbp.cli_plot import plot_command, report_command  # noqa: E402

cli.add_command(plot_command)
cli.add_command(report_command)


from vbp.sweep import sweep_command  # noqa: E402

cli.add_command(sweep_command)

from vbp.cli_designs import designs_command  # noqa: E402

cli.add_command(designs_command)


def main() -> None:  # pragma: no cover - console entry point
    cli(prog_name="vbp")

