"""Results folders to figures and a self-contained report.

`load_results` reads what `vbp reproduce|run|forecast|sweep --out DIR` wrote; `KINDS` lists the
figures, each with a test of whether it fits the folder and a function drawing it from the folder's
tables with `vbp.plots`; `build_report` assembles the manifest, the tables and every fitting figure
into one HTML file (images embedded as base64 PNG, inline CSS, no scripts, no network) or into
Markdown with a figures folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vbp import data, metrics, plots, style
from vbp.errors import InputError, did_you_mean

__all__ = [
    "KINDS", "Kind", "Results", "build_report", "chosen_metrics", "draw", "fitting",
    "load_results", "render_html", "render_markdown", "round_summary", "save_figure"
]

RUN_KINDS = ("reproduce", "run", "forecast")
HEADLINE_SCENARIO = "national-history"
SWEEP_FIXED = ("point", "rep", "seed", "status", "error")


@dataclass(frozen=True)
class Results:
    """A results folder: its manifest and lazily read tables."""

    path: Path
    manifest: dict
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", ""))

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def table(self, name: str) -> pd.DataFrame:
        """A CSV or Parquet table of the folder (read once)."""
        if name not in self._cache:
            p = self.path / name
            try:
                self._cache[name] = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {name}: {exc}", file=str(p)) from None
        return self._cache[name]

    def summary(self) -> dict:
        try:
            return json.loads((self.path / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def scenario(self):
        """The simulated scenario (from scenario.toml), or None when the folder has none."""
        if "scenario" not in self._cache:
            from vbp.scenario import Scenario

            p = self.path / "scenario.toml"
            try:
                self._cache["scenario"] = Scenario.model_validate(tomllib.loads(p.read_text("utf-8")))
            except FileNotFoundError:
                self._cache["scenario"] = None
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read the scenario: {exc}", file=str(p)) from None
        return self._cache["scenario"]


def load_results(path: str | Path) -> Results:
    """Open a results folder, or raise InputError saying what is wrong with it."""
    p = Path(path)
    hint = "write one with `vbp reproduce|run|forecast|sweep --out DIR`"
    if not p.exists():
        raise InputError(f"no such results folder: {p}; {hint}", field="RESULTS", value=str(p))
    if not p.is_dir():
        raise InputError(f"expected a results folder, got a file: {p}; {hint}", field="RESULTS", value=str(p))
    try:
        manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"not a vbp results folder (no manifest.json); {hint}", field="RESULTS",
                         value=str(p)) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"manifest.json is unreadable: {exc}", file=str(p / "manifest.json")) from None
    if not isinstance(manifest, dict) or manifest.get("kind") not in (*RUN_KINDS, "sweep"):
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise InputError(f"unknown results kind {kind!r}; expected one of "
                         f"{', '.join((*RUN_KINDS, 'sweep'))}", file=str(p / "manifest.json"), field="kind")
    return Results(p, manifest)


# ---------------------------------------------------------------------------------------------
# Tables derived from a folder


def _rulebooks(res: Results) -> dict:
    """Round id -> the rulebook in force, with the scenario's rule levers applied."""
    from vbp.model import effective_rulebook

    sc = res.scenario()
    return {r.id: effective_rulebook(sc.rulebook(r.rulebook), sc.rules) for r in sc.rounds} if sc else {}


def round_summary(res: Results) -> pd.DataFrame:
    """Per round in time order: simulated mean and 95% interval of each statistic, published values."""
    rm = res.table("round_metrics.csv")
    sc = res.scenario()
    cats = {r.id: r.category for r in sc.rounds} if sc else {}
    published = metrics.round_targets()
    rows = []
    for rid, sub in rm.groupby("round", sort=False):
        pub = published.get(rid, {})
        row = {"round": rid, "category": cats.get(rid, "drug"), "published": pub.get("avg_cut", np.nan)}
        s = metrics.summarize(sub["avg_cut"])
        row.update(mean=s["mean"], ci_low=s["ci_low"], ci_high=s["ci_high"])
        for col in ("procured", "winning_products", "winning_firms", "winner_share", "annual_savings_bn"):
            row[col] = metrics.summarize(sub[col])["mean"] if col in sub else np.nan
            row["published_" + col] = pub.get(col, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _savings(res: Results) -> pd.DataFrame:
    if res.has("savings_path.csv"):
        return res.table("savings_path.csv")
    return metrics.savings_path(res.table("deliveries.parquet"))


def _statements(res: Results) -> pd.DataFrame | None:
    if res.manifest.get("scenario") != HEADLINE_SCENARIO:
        return None  # the official statements are national totals
    return pd.DataFrame(data.read_toml("targets.toml")["savings_path"]["points"])


def _bids(res: Results) -> tuple[pd.DataFrame, dict, dict]:
    """Bids with a `valid` column, gate ratios and anchor factors per round, from the rulebooks."""
    books = _rulebooks(res)
    b = res.table("bids.parquet").copy()
    # as rules.valid_bids: finite, > 0, and <= the unit's ceiling when the ceiling is a cap
    cap = b["round"].map({r: rb.ceiling_is_cap for r, rb in books.items()}).fillna(True).astype(bool)
    b["valid"] = np.isfinite(b["bid"]) & (b["bid"] > 0) & (~cap | (b["bid"] <= b["ceiling"]))
    gates = {r: rb.gate_ratio or rb.tier_ratio for r, rb in books.items() if rb.gate_ratio or rb.tier_ratio}
    anchors = {r: rb.anchor_mean_factor for r, rb in books.items() if rb.anchor_mean_factor}
    return b, gates, anchors


def _sweep(res: Results) -> pd.DataFrame:
    d = res.table("results.csv")
    if "status" in d and (d["status"] == "ok").any():
        d = d[d["status"] == "ok"]
    return d


def _parameters(res: Results) -> list[str]:
    d = res.table("results.csv")
    params = res.manifest.get("parameters") or [
        c for c in d.columns if c not in SWEEP_FIXED and c not in (res.manifest.get("metrics") or ())]
    return [p for p in params if p in d.columns and d[p].nunique() > 1]


def _with_data(res: Results, table: pd.DataFrame) -> list[str]:
    """Metric names of a long table (a `metric` column) or metric columns with some data."""
    if "metric" in table:
        return list(table["metric"].unique())
    names = [c for c in (res.manifest.get("metrics") or table.columns) if c in table and c not in SWEEP_FIXED]
    return [m for m in names if pd.to_numeric(table[m], errors="coerce").notna().any()]


def chosen_metrics(res: Results, table: pd.DataFrame, wanted: tuple[str, ...] = (), limit: int = 4) -> list[str]:
    """Metrics to draw: those asked for, else the headline ones with data, else the first few."""
    have = _with_data(res, table)
    if wanted:
        return [m for m in wanted if m in have]
    head = [t.name for t in metrics.targets() if t.name in have]
    return (head or have)[:limit]


# ---------------------------------------------------------------------------------------------
# Figure kinds

Drawn = list[tuple[str, Figure, str]]  # (file stem, figure, caption)


def _grid(n: int, ncols: int, width: float, height: float, **kw) -> tuple[Figure, list]:
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width if ncols > 1 else style.COLUMN_IN, height * nrows), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kw)).ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _one(width: float, height: float) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def _draw_targets(res, wanted) -> Drawn:
    t = res.table("targets.csv")
    fig, ax = _one(style.COLUMN_IN, 0.8 + 0.62 * len(t))
    plots.plot_targets(t, ax=ax)
    return [("targets", fig, ("Headline targets: simulated mean (point) and 95% interval over replications "
             "as a percentage of the published figure (line at 100%); shaded: the tolerance."))]


def _draw_cuts(res, wanted) -> Drawn:
    t = round_summary(res)
    fig, ax = _one(min(style.DOUBLE_IN, max(2.4, 0.8 + 0.3 * len(t))), 2.6)
    plots.plot_round_cuts(t, ax=ax)
    return [("cuts", fig, ("Average price cut per round: simulated mean and 95% interval (drugs blue, "
             "devices orange) beside the published figure (open diamond)."))]


def _draw_savings(res, wanted) -> Drawn:
    fig, ax = _one(style.COLUMN_IN, 2.5)
    plots.plot_savings_path(_savings(res), _statements(res), ax=ax)
    return [("savings", fig, ("Realised cumulative savings (reference minus award price, times actual "
             "purchases): simulated mean and 95% band; official cumulative statements as points."))]


def _draw_validation(res, wanted) -> Drawn:
    summ = res.summary()
    t = pd.DataFrame(summ["loro"])
    fig, ax = _one(min(style.DOUBLE_IN, max(style.COLUMN_IN, 0.8 + 0.4 * len(t))), 2.8)
    plots.plot_validation(t, pd.DataFrame(summ.get("rolling_origin") or []), ax=ax)
    return [("validation", fig, ("Out-of-sample drug average cuts: the published cut (open diamond); the "
             "leave-one-round-out prediction, refitted without the round, with its 95% predictive "
             "interval (point and bar); the rolling-origin forecast, fitted to the earlier rounds only (triangle)."))]


def _draw_bids(res, wanted) -> Drawn:
    b, gates, anchors = _bids(res)
    width = min(style.DOUBLE_IN, max(style.COLUMN_IN, 1.2 + 0.6 * b["round"].nunique()))
    fig = Figure(figsize=(width, 4.6), layout="constrained")
    a1, a2 = fig.subplots(2, 1, sharex=True)
    plots.plot_bids(b, ax=a1)
    plots.plot_bid_gate(b, gates, ax=a2, anchor_factor=anchors)
    a1.tick_params(labelbottom=False)
    handles = {h.get_label(): h for a in (a1, a2) for h in a.get_legend().legend_handles}
    for a in (a1, a2):
        a.get_legend().remove()
    fig.legend(handles=list(handles.values()), loc="outside upper center",
               ncol=len(handles) if width > 5 else 2)
    return [("bids", fig, ("Valid bids per round (points; winners blue). Top: as a percentage of the "
             "ceiling. Bottom: relative to the lowest valid bid of the molecule, log scale, with the "
             "rulebook's price gate (red line); winners above it won by another route."))]


def _draw_winners(res, wanted) -> Drawn:
    units, books = res.table("units.parquet"), _rulebooks(res)
    groups: dict = {}
    for rid in dict.fromkeys(units["round"]):
        rb = books[rid]
        groups.setdefault((rb.name, rb.max_winners), []).append(rid)
    fig, axes = _grid(len(groups), 3, style.DOUBLE_IN, 2.0)
    for ax, ((name, cap), rids) in zip(axes, groups.items()):
        title = ", ".join(rids) + ("" if rids == [name] else f" ({name})")
        plots.plot_winners(units[units["round"].isin(rids)], cap, ax=ax, title=title)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=2)
    return [("winners", fig, ("Winners against qualified bidders per unit (marker area: number of units "
             "over replications) and the most winners the rulebook allows, min(cap(N), N) (red)."))]


def _draw_response(res, wanted) -> Drawn:
    d, params = _sweep(res), _parameters(res)
    ms = chosen_metrics(res, d, wanted)
    if not ms:
        return []
    out = []
    for p in params:
        others = [q for q in params if q != p and d[q].nunique() <= 5]
        design = res.manifest.get("design")
        grid = (design.get("kind") if isinstance(design, dict) else design) == "grid"
        by = others[0] if others and grid else None
        fig, axes = _grid(len(ms), 2, style.DOUBLE_IN, 2.3)
        for ax, m in zip(axes, ms):
            plots.plot_response(d, p, m, ax=ax, by=by)
        rest = (f"; one curve per {by}" if by else "; pooled over the other parameters"
                if len(params) > 1 else "")
        if by:  # one legend for all panels, above them
            for ax in axes:
                ax.get_legend().remove()
            fig.legend(*axes[0].get_legend_handles_labels(), title=by, loc="outside upper center",
                       ncol=min(d[by].nunique(), 6))
        out.append((f"response-{_slug(p)}", fig,
                    f"Response to {p}: mean and 95% interval over replications{rest}."))
    return out


def _draw_heatmap(res, wanted) -> Drawn:
    d, (x, y) = _sweep(res), _parameters(res)[:2]
    ms = chosen_metrics(res, d, wanted)
    if not ms:
        return []
    fig, axes = _grid(len(ms), 2, style.DOUBLE_IN, 2.6)
    fig.get_layout_engine().set(wspace=0.12)
    for ax, m in zip(axes, ms):
        plots.plot_heatmap(d, x, y, m, ax=ax)
    return [(f"heatmap-{_slug(x)}-{_slug(y)}", fig, f"Mean of each metric over {x} and {y}.")]


def _draw_sobol(res, wanted) -> Drawn:
    t = res.table("sobol.csv")
    ms = chosen_metrics(res, t, wanted)
    if not ms:
        return []
    n_par = t["parameter"].nunique()
    fig, axes = _grid(len(ms), 2, style.DOUBLE_IN, 0.9 + 0.32 * n_par)
    for ax, m in zip(axes, ms):
        plots.plot_sobol(t, m, ax=ax)
    return [("sobol", fig, ("Sobol sensitivity indices: first order S1 (variance explained by the "
             "parameter alone) and total order ST (with its interactions), 95% confidence bars."))]


def _draw_counterfactual(res, wanted) -> Drawn:
    t = res.table("counterfactual.csv")
    ms = chosen_metrics(res, t, wanted)
    if not ms:
        return []
    fig, axes = _grid(len(ms), 2, style.DOUBLE_IN, 0.9 + 0.34 * t["variant"].nunique())
    for ax, m in zip(axes, ms):
        plots.plot_counterfactual(t, m, ax=ax)
    return [("counterfactual", fig, ("Policy variants against the baseline with common random numbers: "
             "paired difference per replication, mean and 95% confidence interval; right: baseline "
             "and variant means."))]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _nonempty(res: Results, name: str) -> bool:
    return res.has(name) and len(res.table(name)) > 0


@dataclass(frozen=True)
class Kind:
    """A figure kind: whether it fits a folder, and how to draw it (see docs/figures.md)."""

    name: str
    fits: Callable[[Results], bool]
    draw: Callable[[Results, tuple[str, ...]], Drawn]


def _run_with(*names: str) -> Callable[[Results], bool]:
    """Fits a reproduce/run/forecast folder holding every named table (the first non-empty)."""
    return lambda r: r.kind in RUN_KINDS and _nonempty(r, names[0]) and all(r.has(n) for n in names[1:])


def _sweep_with(n_params: int) -> Callable[[Results], bool]:
    """Fits a sweep folder whose results vary at least `n_params` parameters."""
    return lambda r: r.kind == "sweep" and _nonempty(r, "results.csv") and len(_parameters(r)) >= n_params


def _validated(res: Results) -> bool:
    """Fits a national-history run whose summary holds leave-one-round-out predictions (as its table)."""
    return res.kind in RUN_KINDS and res.manifest.get("scenario") == HEADLINE_SCENARIO and bool(
        res.summary().get("loro"))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("targets", _run_with("targets.csv"), _draw_targets),
    Kind("cuts", _run_with("round_metrics.csv"), _draw_cuts),
    Kind("savings", lambda r: _run_with("savings_path.csv")(r) or _run_with("deliveries.parquet")(r),
         _draw_savings),
    Kind("validation", _validated, _draw_validation),
    Kind("bids", _run_with("bids.parquet", "scenario.toml"), _draw_bids),
    Kind("winners", _run_with("units.parquet", "scenario.toml"), _draw_winners),
    Kind("response", _sweep_with(1), _draw_response),
    Kind("heatmap", _sweep_with(2), _draw_heatmap),
    Kind("sobol", lambda r: _nonempty(r, "sobol.csv"), _draw_sobol),
    Kind("counterfactual", lambda r: _nonempty(r, "counterfactual.csv"), _draw_counterfactual),
)}


def fitting(res: Results) -> list[str]:
    """Names of the figure kinds that fit the folder, in KINDS order."""
    return [name for name, k in KINDS.items() if k.fits(res)]


def _check_metrics(res: Results, wanted: tuple[str, ...]) -> None:
    """Every metric asked for must have data in one of the sweep tables."""
    have: list[str] = []
    if _nonempty(res, "results.csv"):
        have += _with_data(res, _sweep(res))
    for name in ("sobol.csv", "counterfactual.csv"):
        if _nonempty(res, name):
            have += list(res.table(name)["metric"].unique())
    for m in wanted:
        if m not in have:
            raise InputError(f"no metric {m!r}{did_you_mean(m, set(have))} with data in this folder; "
                             f"metrics: {', '.join(dict.fromkeys(have)) or 'none'}", field="--metric", value=m)


def draw(res: Results, kinds: tuple[str, ...] = (), metrics_wanted: tuple[str, ...] = ()) -> Drawn:
    """Draw the named kinds (default: every kind that fits); asking for one that does not fit is an error."""
    _check_metrics(res, metrics_wanted)
    names = list(kinds) or fitting(res)
    if not names:
        raise InputError(f"nothing to plot: the {res.kind} folder holds none of the tables the figures use",
                         field="RESULTS", value=str(res.path))
    out: Drawn = []
    with style.context():
        for name in names:
            if not KINDS[name].fits(res):
                raise InputError(f"figure kind {name!r} does not fit this {res.kind} folder; kinds that fit: "
                                 f"{', '.join(fitting(res)) or 'none'}", field="--kind", value=name)
            out.extend(KINDS[name].draw(res, metrics_wanted))
    if not out:
        raise InputError("nothing to plot: no metric has data (did every task fail?)", field="RESULTS",
                         value=str(res.path))
    return out


def save_figure(fig: Figure, path: Path, *, dpi: int = 300) -> Path:
    """Save with the vbp style and without timestamps, so the same results give the same files."""
    fmt = path.suffix.lstrip(".")
    meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
    with style.context():
        fig.savefig(path, dpi=dpi, metadata=meta)
    return path


def _png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    with style.context():
        fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The report: blocks -> HTML or Markdown

Block = tuple  # ("h1"|"h2"|"p", text) | ("table", DataFrame of str) | ("figure", stem, png, caption)


def _kv(d: dict) -> pd.DataFrame:
    def show(v):
        if isinstance(v, dict):
            return ", ".join(f"{k} {w}" for k, w in v.items())
        return ", ".join(map(str, v)) if isinstance(v, list) else str(v)

    return pd.DataFrame([{"field": k, "value": show(v)} for k, v in d.items() if k != "files"])


def _interval(lo, hi, f) -> str:
    return f"{f(lo)} – {f(hi)}"


def _pair(row: pd.Series, col: str, f=style.fmt_num) -> str:
    """Simulated value with the published one in brackets when there is one."""
    pub = row["published_" + col]
    return f(row[col]) + (f" [{f(pub)}]" if pd.notna(pub) else "")


def _run_tables(res: Results) -> list[Block]:
    blocks: list[Block] = []
    summ = res.summary()
    if _nonempty(res, "targets.csv"):
        rows = []
        for _, r in res.table("targets.csv").iterrows():
            f = style.fmt_bn if style.metric_unit(r["name"]) == "bn" else style.fmt_pct
            rows.append({"target": r["name"], "published": f(r["published"]), "simulated mean": f(r["mean"]),
                         "95% interval": _interval(r["ci_low"], r["ci_high"], f),
                         "tolerance": "±" + (f(r["tolerance"]) if f is style.fmt_bn
                                             else f"{100 * r['tolerance']:.1f} pts"),
                         "within": "yes" if r["ok"] else "no"})
        blocks += [("h2", "Published vs simulated"), ("table", pd.DataFrame(rows))]
    if _nonempty(res, "round_metrics.csv"):
        rows = []
        for _, r in round_summary(res).iterrows():
            rows.append({"round": r["round"], "procured": style.fmt_num(r["procured"]),
                         "average cut": f"{style.fmt_pct(r['mean'])} "
                                        f"({_interval(r['ci_low'], r['ci_high'], style.fmt_pct)})",
                         "published cut": style.fmt_pct(r["published"]),
                         "winning products": _pair(r, "winning_products"),
                         "winning firms": _pair(r, "winning_firms"),
                         "winner share": style.fmt_pct(r["winner_share"]),
                         "annual savings": _pair(r, "annual_savings_bn", style.fmt_bn)})
        blocks += [("h2", "Per round (simulated mean; published in brackets)"), ("table", pd.DataFrame(rows))]
    if summ.get("savings_path"):
        rows = [{"date": r["date"], "scope": r["scope"], "published": style.fmt_bn(r["published"]),
                 "simulated mean": style.fmt_bn(r["mean"]),
                 "95% interval": _interval(r["ci_low"], r["ci_high"], style.fmt_bn),
                 "error": f"{r['error_pct']:+.0f}%"} for r in summ["savings_path"]]
        blocks += [("h2", "Validation: realised cumulative savings (not calibrated to)"),
                   ("table", pd.DataFrame(rows))]
    if summ.get("loro") and res.manifest.get("scenario") == HEADLINE_SCENARIO:
        rows = [{"round": r["round"], "published": style.fmt_pct(r["published"]),
                 "predicted": style.fmt_pct(r["predicted"]), "error": f"{100 * r['error']:+.1f} pts"}
                for r in summ["loro"]]
        blocks += [("h2", "Validation: leave one round out"), ("table", pd.DataFrame(rows))]
    if res.kind == "forecast":
        rows = []
        for k, v in summ.items():
            if isinstance(v, dict) and "mean" in v:
                f = {"pct": style.fmt_pct, "bn": style.fmt_bn}.get(style.metric_unit(k), style.fmt_num)
                rows.append({"statistic": k, "mean": f(v["mean"]),
                             "95% interval": _interval(v.get("ci_low"), v.get("ci_high"), f)})
        if rows:
            blocks += [("h2", f"Forecast of {summ.get('round', '')}"), ("table", pd.DataFrame(rows))]
    return blocks


def _fmt_metric(m: str):
    return {"pct": style.fmt_pct, "bn": style.fmt_bn}.get(style.metric_unit(m), style.fmt_num)


def _sweep_tables(res: Results, wanted: tuple[str, ...], max_rows: int = 60) -> list[Block]:
    blocks: list[Block] = []
    if _nonempty(res, "results.csv"):
        raw = res.table("results.csv")
        d, params = _sweep(res), _parameters(res)
        ms = chosen_metrics(res, d, wanted)
        failed = raw[raw["status"] != "ok"] if "status" in raw else raw.iloc[:0]
        blocks += [("h2", "Sweep"), ("p", (f"{raw['point'].nunique()} design points, {len(raw)} tasks, "
                                           f"{len(failed)} failed; parameters: {', '.join(params) or 'none'}."))]
        g = d.groupby("point", sort=True)
        tab = g[params].first() if params else pd.DataFrame(index=g.size().index)
        tab = tab.astype(str)
        tab.insert(len(tab.columns), "replications", g.size().astype(str))
        for m in ms:
            tab[style.metric_label(m, unit=False) + " (mean)"] = g[m].mean().map(_fmt_metric(m))
        note = f" (first {max_rows} of {len(tab)})" if len(tab) > max_rows else ""
        blocks += [("h2", f"Results by design point{note}"), ("table", tab.head(max_rows).reset_index())]
        if len(failed):
            blocks += [("h2", "Failed tasks"),
                       ("table", failed[["point", "rep", "error"]].head(20).astype(str))]
    if _nonempty(res, "sobol.csv"):
        t = res.table("sobol.csv").copy()
        for c in ("S1", "ST"):
            t[c] = [f"{v:.3f} ± {e:.3f}" for v, e in zip(t[c], t[c + "_conf"])]
        blocks += [("h2", "Sobol indices (± 95% confidence half-width)"),
                   ("table", t[["metric", "parameter", "S1", "ST"]])]
    if _nonempty(res, "counterfactual.csv"):
        rows = []
        for _, r in res.table("counterfactual.csv").iterrows():
            f, unit = _fmt_metric(r["metric"]), style.metric_unit(r["metric"])

            def diff(v, unit=unit):
                return f"{100 * v:+.1f} pts" if unit == "pct" else f"{v:+,.1f}" + (" bn" if unit == "bn" else "")

            rows.append({"metric": r["metric"], "variant": r["variant"], "baseline": f(r["baseline_mean"]),
                         "variant mean": f(r["variant_mean"]), "difference": diff(r["diff_mean"]),
                         "95% CI": _interval(r["diff_ci_low"], r["diff_ci_high"], diff), "n": str(r["n"])})
        blocks += [("h2", "Counterfactuals: paired differences from the baseline"),
                   ("table", pd.DataFrame(rows))]
    return blocks


def build_report(res: Results, *, metrics_wanted: tuple[str, ...] = (), dpi: int = 200) -> list[Block]:
    """The report as a list of blocks: headings, the manifest, tables and every fitting figure."""
    m = res.manifest
    blocks: list[Block] = [
        ("h1", f"vbp {res.kind}: {m.get('scenario', res.path.name)}"),
        ("p", ("Intervals are the 2.5th-97.5th percentiles over replications unless marked as confidence "
              "intervals. Cuts are 1 - award price / pre-VBP reference price; money in CNY.")),
        ("h2", "Manifest"), ("table", _kv(m)),
    ]
    _check_metrics(res, metrics_wanted)
    blocks += _sweep_tables(res, metrics_wanted) if res.kind == "sweep" else _run_tables(res)
    with style.context():
        drawn = [d for name in fitting(res) for d in KINDS[name].draw(res, metrics_wanted)]
    blocks += [("h2", "Figures")] if drawn else []
    for stem, fig, caption in drawn:
        blocks.append(("figure", stem, _png(fig, dpi), caption))
    return blocks


_CSS = """body{font-family:sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.85rem}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{border-bottom:2px solid #888}figure{margin:1.5rem 0}img{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#444;margin-top:.3rem}"""


def render_html(blocks: list[Block]) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, no scripts, no links out."""
    esc = html.escape
    title = next((b[1] for b in blocks if b[0] == "h1"), "vbp report")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b[0] in ("h1", "h2", "p"):
            parts.append(f"<{b[0]}>{esc(b[1])}</{b[0]}>")
        elif b[0] == "table":
            t = b[1]
            head = "".join(f"<th>{esc(str(c))}</th>" for c in t.columns)
            body = "".join("<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in row) + "</tr>"
                           for row in t.itertuples(index=False))
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "figure":
            _, stem, png, caption = b
            src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            parts.append(f'<figure id="{esc(stem)}"><img alt="{esc(stem)}" src="{src}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], figures_dir: Path, link_prefix: str) -> str:
    """Markdown text; figures are written as PNG files into `figures_dir`, linked via `link_prefix`."""
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h1":
            lines += [f"# {b[1]}", ""]
        elif b[0] == "h2":
            lines += [f"## {b[1]}", ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            t = b[1]
            lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
            lines.append("|" + "---|" * len(t.columns))
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in t.itertuples(index=False)]
            lines.append("")
        elif b[0] == "figure":
            _, stem, png, caption = b
            figures_dir.mkdir(parents=True, exist_ok=True)
            (figures_dir / f"{stem}.png").write_bytes(png)
            lines += [f"![{stem}]({link_prefix}{stem}.png)", "", f"*{caption}*", ""]
    return "\n".join(lines)
