"""Figures as pure functions: tables in, an optional Axes in, the Axes out (usable from a notebook).

Every function draws with the vbp style (`vbp.style`) and labels its axes with units. Intervals are
the 2.5th-97.5th percentiles over replications, as everywhere in vbp: the spread of simulated
histories that a published figure is compared against. Cuts and shares are fractions in [0, 1],
shown in percent; money is CNY bn with thousands separators. Nothing here reads files or saves.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from vbp import style
from vbp.rules import lookup

__all__ = [
    "DEVICE_CATEGORIES", "band", "bid_ratios", "plot_bid_gate", "plot_bids", "plot_counterfactual",
    "plot_heatmap", "plot_response", "plot_round_cuts", "plot_savings_path", "plot_sobol",
    "plot_targets", "plot_validation", "plot_winners"
]

DEVICE_CATEGORIES = frozenset({"stent", "joint"})
_BAND_ALPHA = 0.25


def _styled(fn):
    """Run a plot function inside the vbp rc context, so every text and line it makes is styled."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style.context():
            return fn(*args, **kwargs)

    return wrapper


def _axes(ax: Axes | None, width: float = style.COLUMN_IN, height: float = 2.4) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(width, height), layout="constrained")
    return ax


def band(values: pd.DataFrame | pd.Series, by) -> pd.DataFrame:
    """Mean and 95% interval (2.5th-97.5th percentile) of `values` per group: columns mean, lo, hi, n."""
    g = values.groupby(by, sort=True)
    return pd.DataFrame({"mean": g.mean(), "lo": g.quantile(0.025), "hi": g.quantile(0.975),
                         "n": g.count()})


def _unit_axis(ax: Axes, metric: str, which: str = "y", *, diff: bool = False) -> None:
    if style.metric_unit(metric) == "pct":
        style.percent_axis(ax, which, points=diff)
    else:
        style.thousands_axis(ax, which)


def _jitter(n: int, rng: np.random.Generator, width: float = 0.32) -> np.ndarray:
    return rng.uniform(-width, width, n)


def _sample(df: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """At most n rows, drawn without replacement (keeps strip plots light)."""
    if len(df) <= n:
        return df
    return df.iloc[np.sort(rng.choice(len(df), size=n, replace=False))]


@_styled
def plot_targets(table: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Headline targets: simulated mean and 95% interval as a percentage of the published value.

    `table` has columns name, published, mean, ci_low, ci_high and optionally tolerance (in the
    target's units). Targets of different units share one axis this way; the values themselves are
    written beside each row.
    """
    t = table.reset_index(drop=True)
    ax = _axes(ax, style.COLUMN_IN, 0.8 + 0.62 * len(t))
    y = np.arange(len(t))[::-1]
    pub = t["published"].to_numpy(float)
    rel = {c: 100 * t[c].to_numpy(float) / pub for c in ("mean", "ci_low", "ci_high")}
    has_tol = "tolerance" in t
    tol = 100 * t["tolerance"].to_numpy(float) / np.abs(pub) if has_tol else np.zeros(len(t))
    if has_tol:
        for yi, ti in zip(y, tol):
            ax.fill_betweenx([yi - 0.18, yi + 0.18], 100 - ti, 100 + ti, color=style.GREY, alpha=0.25,
                             lw=0, label="tolerance" if yi == y[0] else None)
    ax.axvline(100, color="black", lw=0.8, label="published")
    ax.errorbar(rel["mean"], y, xerr=[rel["mean"] - rel["ci_low"], rel["ci_high"] - rel["mean"]],
                fmt="o", color=style.PALETTE["blue"], ms=4, lw=1.2, label="simulated (95% interval)")
    for yi, (_, r) in zip(y, t.iterrows()):
        bn = style.metric_unit(r["name"]) == "bn"
        f = style.fmt_bn if bn else style.fmt_pct
        span = (f"¥{r['ci_low']:,.1f}–{r['ci_high']:,.1f} bn" if bn
                else f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}%")
        ax.annotate(f"{style.metric_label(r['name'], unit=False)}\n"
                    f"published {f(r['published'])}, simulated {f(r['mean'])} ({span})", (0.0, yi + 0.22),
                    xycoords=("axes fraction", "data"), va="bottom", fontsize=style.SMALL_PT - 0.5,
                    linespacing=1.1, bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 0.4})
    ax.set_yticks([])
    ax.spines["left"].set_visible(False)
    ax.set_ylim(-0.45, len(t) - 0.05)
    lo = np.nanmin(np.r_[rel["ci_low"], 100 - tol])
    hi = np.nanmax(np.r_[rel["ci_high"], 100 + tol])
    pad = 0.08 * (hi - lo) + 1
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    ax.set_xlabel("simulated as % of published")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}%"))
    handles, names = ax.get_legend_handles_labels()
    order = [names.index(n) for n in ("simulated (95% interval)", "published", "tolerance") if n in names]
    ax.legend([handles[i] for i in order], [names[i] for i in order], loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncol=3, handlelength=1.2, columnspacing=1.0)
    return style.finish(ax, grid_axis="x")


@_styled
def plot_round_cuts(table: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Average cut per round: simulated mean with 95% interval, the published figure as a point.

    `table`: one row per round in time order, columns round, mean, ci_low, ci_high, published
    (nan when not published) and optionally category (stent/joint are devices) and label.
    """
    t = table.reset_index(drop=True)
    ax = _axes(ax, style.COLUMN_IN, 2.5)
    x = np.arange(len(t))
    cat = t["category"] if "category" in t else pd.Series("drug", index=t.index)
    device = cat.isin(DEVICE_CATEGORIES).to_numpy()
    for mask, colour, name in ((~device, style.PALETTE["blue"], "drugs"),
                               (device, style.PALETTE["orange"], "devices")):
        if mask.any():
            m, lo, hi = (t.loc[mask, c].to_numpy(float) for c in ("mean", "ci_low", "ci_high"))
            ax.errorbar(x[mask], m, yerr=[m - lo, hi - m], fmt="o" if name == "drugs" else "s",
                        color=colour, ms=4, lw=1.4, label=f"simulated, {name}")
    pub = pd.to_numeric(t.get("published", pd.Series(np.nan, index=t.index)), errors="coerce")
    if pub.notna().any():
        ax.scatter(x[pub.notna()], pub[pub.notna()], marker="D", s=22, facecolors="none",
                   edgecolors="black", lw=0.9, zorder=3, label="published")
    labels = t["label"] if "label" in t else t["round"]
    ax.set_xticks(x, labels, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(t) - 0.4)
    ax.set_ylim(0, 1)
    style.percent_axis(ax)
    ax.set_ylabel("average price cut (%)")
    if len(t) >= 6:  # room for one row above the axes
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, handletextpad=0.3,
                  columnspacing=0.9)
    else:
        ax.legend(loc="best")
    return style.finish(ax)


@_styled
def plot_validation(loro: pd.DataFrame, rolling: pd.DataFrame | None, ax: Axes | None = None) -> Axes:
    """Out-of-sample record of the drug average cuts: each round predicted without its own data.

    `loro`: one row per round in time order, columns round, published, predicted and optionally
    pi_low, pi_high (the leave-one-round-out prediction and its 95% predictive interval).
    `rolling`: columns round, predicted (a forecast fitted to the earlier rounds only), drawn for
    the rounds of `loro` it holds. Why: in-sample fit flatters a calibrated model; this shows how
    well it predicts rounds it was not fitted to.
    """
    t = loro.reset_index(drop=True)
    ax = _axes(ax, style.COLUMN_IN, 2.6)
    x = np.arange(len(t))
    ax.scatter(x, t["published"], marker="D", s=22, facecolors="none", edgecolors="black", lw=0.9,
               zorder=3, label="published")
    m = t["predicted"].to_numpy(float)
    lo, hi = (pd.to_numeric(t.get(c, pd.Series(np.nan, index=t.index))).to_numpy(float)
              for c in ("pi_low", "pi_high"))
    ax.errorbar(x - 0.15, m, yerr=[m - lo, hi - m], fmt="o", color=style.PALETTE["blue"], ms=4, lw=1.4,
                label="round left out (95% PI)")
    if rolling is not None and len(rolling):
        pos = dict(zip(t["round"], x))
        r = rolling[rolling["round"].isin(pos)]
        ax.scatter(r["round"].map(pos) + 0.15, r["predicted"], marker="^", s=20,
                   color=style.PALETTE["vermillion"], zorder=3, label="rolling origin")
    ax.set_xticks(x, t["round"], rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(t) - 0.4)
    style.percent_axis(ax)
    ax.set_ylabel("average price cut (%)")
    ax.set_title("Out of sample: drug average cuts", pad=16)
    handles = dict(zip(*ax.get_legend_handles_labels()[::-1]))
    names = [n for n in ("published", "round left out (95% PI)", "rolling origin") if n in handles]
    ax.legend([handles[n] for n in names], names, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
              handletextpad=0.3, columnspacing=0.9)
    return style.finish(ax)


@_styled
def plot_savings_path(path: pd.DataFrame, statements: pd.DataFrame | None = None,
                      ax: Axes | None = None) -> Axes:
    """Realised cumulative savings over time (mean and 95% band), official statements as points.

    `path`: columns rep, month (date), savings_bn (cumulative CNY bn). `statements`: columns date,
    value (CNY bn) and optionally scope.
    """
    ax = _axes(ax, style.COLUMN_IN, 2.4)
    # cumulative to the end of each month, drawn at the month's end (as the statements are dated)
    p = path.assign(month=pd.to_datetime(path["month"]) + pd.offsets.MonthEnd(0))
    wide = p.pivot_table(index="month", columns="rep", values="savings_bn", aggfunc="last").sort_index()
    wide = wide.ffill().fillna(0.0)
    months = wide.index.to_pydatetime()
    ax.fill_between(months, wide.quantile(0.025, axis=1), wide.quantile(0.975, axis=1),
                    color=style.PALETTE["blue"], alpha=_BAND_ALPHA, lw=0, label="95% interval")
    ax.plot(months, wide.mean(axis=1), color=style.PALETTE["blue"], label="simulated mean")
    if statements is not None and len(statements):
        d = pd.to_datetime(statements["date"]).dt.to_pydatetime()
        v = statements["value"].to_numpy(float)
        ax.scatter(d, v, marker="D", s=22, color=style.PALETTE["vermillion"], zorder=3,
                   label="official statement")
        scopes = statements["scope"] if "scope" in statements else [""] * len(v)
        for di, vi, sc in zip(d, v, scopes):
            ax.annotate(f"{style.fmt_bn(vi, 0)}" + (f"\n{sc}" if sc else ""), (di, vi),
                        xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                        fontsize=style.SMALL_PT - 1, linespacing=0.95)
    import matplotlib.dates as mdates

    if len(months) and (months[-1] - months[0]).days > 730:  # years as labels, quarters as minor ticks
        ax.xaxis.set_major_locator(mdates.YearLocator())
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y"))
        ax.xaxis.set_minor_locator(mdates.MonthLocator(bymonth=(4, 7, 10)))
        ax.set_xlim(left=months[0].replace(month=1, day=1))
    else:
        loc = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(loc)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.set_ylim(bottom=0)
    style.bn_axis(ax)
    ax.set_ylabel("cumulative realised savings (CNY bn)")
    ax.legend(loc="upper left")
    return style.finish(ax)


def bid_ratios(bids: pd.DataFrame, anchor_factor: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Valid bids with `to_ceiling` = bid / ceiling and `to_anchor` = bid / the gate's anchor.

    The anchor is the lowest valid bid of the unit, or max(lowest, factor x mean valid bid) for
    rounds whose rulebook names an anchor factor (batch 11). Validity comes from a boolean `valid`
    column when present, else a finite positive bid.
    """
    ok = bids["valid"] if "valid" in bids else np.isfinite(bids["bid"]) & (bids["bid"] > 0)
    b = bids[ok.astype(bool)].copy()
    keys = ["rep", "round", "unit"]
    g = b.groupby(keys, sort=False)["bid"]
    anchor = g.transform("min")
    factor = b["round"].map(dict(anchor_factor or {})).astype(float)
    if factor.notna().any():
        anchor = np.maximum(anchor, (factor * g.transform("mean")).fillna(0.0))
    b["to_ceiling"] = b["bid"] / b["ceiling"]
    b["to_anchor"] = b["bid"] / anchor
    return b


def _strip(ax: Axes, b: pd.DataFrame, column: str, order: Sequence[str], rng: np.random.Generator,
           max_points: int) -> None:
    """Jittered points per round: losers grey, winners coloured (rasterised: light in PDF/SVG)."""
    pos = {r: i for i, r in enumerate(order)}
    for won, colour, size, alpha in ((False, style.GREY, 3, 0.45), (True, style.PALETTE["blue"], 4, 0.6)):
        part = b[b["won"].astype(bool) == won]
        part = pd.concat([_sample(g, max_points, rng) for _, g in part.groupby("round", sort=False)]
                         ) if len(part) else part
        if not len(part):
            continue
        x = part["round"].map(pos).to_numpy(float) + _jitter(len(part), rng)
        ax.scatter(x, part[column], s=size, color=colour, alpha=alpha, lw=0, rasterized=True)
    ax.set_xticks(range(len(order)), order, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, len(order) - 0.4)


def _bid_legend(extra: list | None = None) -> list:
    return [Line2D([], [], ls="", marker="o", ms=4, color=style.PALETTE["blue"], label="winning bid"),
            Line2D([], [], ls="", marker="o", ms=3, color=style.GREY, label="losing bid"), *(extra or [])]


@_styled
def plot_bids(bids: pd.DataFrame, ax: Axes | None = None, *, rng: np.random.Generator | None = None,
              max_points: int = 3000) -> Axes:
    """Bids per round as a percentage of the round's ceiling (maximum valid price), winners marked.

    `bids` as in bids.parquet (round, bid, ceiling, won; `valid` optional). At most `max_points`
    winners and as many losers are drawn per round, sampled with `rng` (default: a fixed seed).
    """
    rng = rng or np.random.default_rng(0)
    ax = _axes(ax, style.DOUBLE_IN, 2.4)
    b = bid_ratios(bids)
    order = list(dict.fromkeys(b["round"]))
    _strip(ax, b, "to_ceiling", order, rng, max_points)
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_ylim(0, max(1.05, float(b["to_ceiling"].max()) * 1.05) if len(b) else 1.05)
    style.percent_axis(ax)
    ax.set_ylabel("bid (% of ceiling)")
    ceiling = Line2D([], [], color="black", lw=0.8, ls="--", label="ceiling")
    ax.legend(handles=_bid_legend([ceiling]), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    return style.finish(ax)


@_styled
def plot_bid_gate(bids: pd.DataFrame, gates: Mapping[str, float], ax: Axes | None = None, *,
                  anchor_factor: Mapping[str, float] | None = None,
                  rng: np.random.Generator | None = None, max_points: int = 3000) -> Axes:
    """Bids per round relative to the lowest valid bid (log scale), with each round's price gate.

    `gates` maps round -> gate ratio (1.8 for the batch 2-11 rule: a bid may win if at most 1.8x
    the lowest); rounds without a gate get no line. Winners above the line won by another route
    (the 50%-below-ceiling safe harbour, the 0.10-yuan exemption, revival).
    """
    rng = rng or np.random.default_rng(0)
    ax = _axes(ax, style.DOUBLE_IN, 2.4)
    b = bid_ratios(bids, anchor_factor)
    order = list(dict.fromkeys(b["round"]))
    _strip(ax, b, "to_anchor", order, rng, max_points)
    ax.set_yscale("log")
    ratios = sorted({float(gates[r]) for r in order if gates.get(r)})
    for i, r in enumerate(order):
        if gates.get(r):
            ax.hlines(gates[r], i - 0.42, i + 0.42, color=style.PALETTE["vermillion"], lw=1.4)
    top = float(b["to_anchor"].max()) if len(b) else 2.0
    ax.set_ylim(0.9, max(2.5, top * 1.2))
    marks = {1.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, *ratios} | ({2.0} if not ratios else set())
    ticks = sorted(t for t in marks if t <= max(2.5, top * 1.2))
    ax.set_yticks(ticks, [f"{t:.3g}×" for t in ticks])
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    anchor = "anchor" if anchor_factor else "lowest valid bid"
    ax.set_ylabel(f"bid / {anchor}")
    gate_label = ("price gate " + ", ".join(f"{g:.3g}×" for g in ratios)) if ratios else "price gate"
    gate = Line2D([], [], color=style.PALETTE["vermillion"], lw=1.4, label=gate_label)
    ax.legend(handles=_bid_legend([gate] if ratios else None), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), ncol=3)
    return style.finish(ax)


@_styled
def plot_winners(units: pd.DataFrame, cap: Sequence[int], ax: Axes | None = None, *,
                 title: str | None = None) -> Axes:
    """Winners against qualified bidders per unit, with the most winners the rulebook allows.

    `units`: columns n_valid, n_winners (one row per unit and replication). `cap` is the
    rulebook's max-winners table (entry i-1 for i qualified bidders, the last for more); the line
    is min(cap(N), N), since no unit can have more winners than qualified bidders. Marker area is
    proportional to the number of units at that point.
    """
    ax = _axes(ax, style.COLUMN_IN, 2.2)
    counts = units.groupby(["n_valid", "n_winners"]).size().rename("k").reset_index()
    if len(counts):
        size = 6 + 70 * counts["k"] / counts["k"].max()
        ax.scatter(counts["n_valid"], counts["n_winners"], s=size, color=style.PALETTE["blue"],
                   alpha=0.6, lw=0, label="units (marker area: count)", zorder=3)
    n_max = int(max(units["n_valid"].max() if len(units) else 1, 1))
    n = np.arange(0, n_max + 2)
    allowed = [0 if k == 0 else min(int(lookup(cap, k)), k) for k in n]
    ax.plot(n, allowed, drawstyle="steps-mid", color=style.PALETTE["vermillion"], lw=1.2,
            label="most winners allowed")
    ax.set_xlim(-0.5, n_max + 1)
    ax.set_ylim(-0.5, max(max(allowed[: n_max + 1]), int(units["n_winners"].max()) if len(units) else 1)
                + 0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    ax.set_xlabel("qualified bidders N")
    ax.set_ylabel("winners")
    if title:
        ax.set_title(title)
    return style.finish(ax, grid_axis="both")


def _numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def _binned(x: pd.Series, bins: int) -> pd.Series:
    """x itself when it takes few values, else the mean x of its quantile bin."""
    if not _numeric(x) or x.nunique() <= 25:
        return x
    q = pd.qcut(x, bins, duplicates="drop")
    return x.groupby(q, observed=True).transform("mean")


@_styled
def plot_response(results: pd.DataFrame, parameter: str, metric: str, ax: Axes | None = None, *,
                  by: str | None = None, bins: int = 10) -> Axes:
    """A metric against a sweep parameter: mean and 95% interval over replications (and other axes).

    `results`: one row per (design point, replication) with the parameter and metric columns.
    A parameter with more than 25 distinct values (random, LHS, Sobol designs) is binned into
    `bins` quantile bins. With `by`, one curve per value of that second parameter.
    """
    ax = _axes(ax, style.COLUMN_IN, 2.4)
    d = results[np.isfinite(pd.to_numeric(results[metric], errors="coerce"))].copy()
    d[metric] = d[metric].astype(float)
    d["_x"] = _binned(d[parameter], bins)
    groups = [(None, d)] if by is None else list(d.groupby(by, sort=True))
    categorical = not _numeric(d[parameter])
    cats = list(dict.fromkeys(d[parameter])) if categorical else []
    for i, (value, part) in enumerate(groups):
        s = band(part[metric], part["_x"])
        colour = style.CYCLE[i % len(style.CYCLE)]
        label = None if by is None else f"{value:g}" if _numeric(pd.Series([value])) else str(value)
        if categorical:
            s = s.reindex([c for c in cats if c in s.index])
            x = np.array([cats.index(c) for c in s.index], float) + (i - (len(groups) - 1) / 2) * 0.12
            ax.errorbar(x, s["mean"], yerr=[s["mean"] - s["lo"], s["hi"] - s["mean"]], fmt="o",
                        color=colour, ms=4, label=label)
        else:
            x = s.index.to_numpy(float)
            ax.fill_between(x, s["lo"], s["hi"], color=colour, alpha=_BAND_ALPHA, lw=0)
            ax.plot(x, s["mean"], color=colour, marker="o", ms=3, label=label)
    if categorical:
        ax.set_xticks(range(len(cats)), [str(c) for c in cats])
        ax.set_xlim(-0.5, len(cats) - 0.5)
    elif d["_x"].nunique() <= 8:  # a grid: ticks at the values run
        ax.set_xticks(sorted(d["_x"].unique()))
    ax.set_xlabel(parameter)
    ax.set_ylabel(style.metric_label(metric))
    _unit_axis(ax, metric)
    if by is not None:
        ax.legend(loc="best", title=by)
    return style.finish(ax)


def _levels(s: pd.Series, bins: int) -> tuple[pd.Series, list]:
    """Category positions for a heatmap axis: the values themselves, or quantile-bin centres."""
    if _numeric(s) and s.nunique() > 12:
        s = _binned(s, bins).round(6)
    levels = sorted(s.unique()) if _numeric(s) else list(dict.fromkeys(s))
    return s, levels


@_styled
def plot_heatmap(results: pd.DataFrame, x: str, y: str, metric: str, ax: Axes | None = None, *,
                 bins: int | None = None) -> Axes:
    """Mean of a metric over a two-parameter grid (cells annotated when the grid is small).

    A parameter with more than 12 distinct values (random designs) is cut into `bins` quantile
    bins, by default about sqrt(points / 2) (3 to 8), so most cells hold a few design points.
    """
    ax = _axes(ax, style.COLUMN_IN, 2.6)
    d = results[np.isfinite(pd.to_numeric(results[metric], errors="coerce"))].copy()
    d[metric] = d[metric].astype(float)
    if bins is None:
        bins = int(np.clip(np.sqrt(len(d[[x, y]].drop_duplicates()) / 2), 3, 8))
    d["_x"], xs = _levels(d[x], bins)
    d["_y"], ys = _levels(d[y], bins)
    grid = d.pivot_table(index="_y", columns="_x", values=metric, aggfunc="mean").reindex(
        index=ys, columns=xs)
    z = grid.to_numpy(float)
    mesh = ax.pcolormesh(np.arange(len(xs) + 1) - 0.5, np.arange(len(ys) + 1) - 0.5,
                         np.ma.masked_invalid(z), cmap="viridis", shading="flat")
    unit = style.metric_unit(metric)
    scale = 100 if unit == "pct" else 1
    span = scale * (np.nanmax(z) - np.nanmin(z)) if np.isfinite(z).any() else 0.0
    digits = 0 if span >= 5 else 1 if span >= 0.5 else 2

    def fmt(v: float) -> str:
        return f"{scale * v:,.{digits}f}" + ("%" if unit == "pct" else "")

    cbar = ax.figure.colorbar(mesh, ax=ax, pad=0.02)
    cbar.set_label(style.metric_label(metric), fontsize=style.FONT_PT)
    cbar.ax.tick_params(labelsize=style.SMALL_PT)
    _unit_axis(cbar.ax, metric)
    if z.size <= 64:
        lo, hi = np.nanmin(z), np.nanmax(z)
        for (i, j), v in np.ndenumerate(z):
            if np.isfinite(v):
                light = hi > lo and (v - lo) / (hi - lo) > 0.6
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=style.SMALL_PT - 1,
                        color="black" if light else "white")
    show = (lambda v: f"{v:.3g}") if all(_numeric(pd.Series([v])) for v in xs + ys) else str
    ax.set_xticks(range(len(xs)), [show(v) for v in xs], rotation=40 if len(xs) > 6 else 0,
                  ha="right" if len(xs) > 6 else "center")
    ax.set_yticks(range(len(ys)), [show(v) for v in ys])
    binned = {c: " (bin mean)" if not d[f"_{a}"].equals(d[c]) else "" for a, c in (("x", x), ("y", y))}
    ax.set_xlabel(x + binned[x])
    ax.set_ylabel(y + binned[y])
    return style.finish(ax, grid_axis=None)


@_styled
def plot_sobol(table: pd.DataFrame, metric: str, ax: Axes | None = None) -> Axes:
    """First-order (S1) and total-order (ST) Sobol indices of one metric, with 95% confidence bars.

    `table`: columns metric, parameter, S1, S1_conf, ST, ST_conf (conf = half-width, as SALib).
    Parameters are sorted by total-order index, largest on top.
    """
    t = table[table["metric"] == metric].sort_values("ST", ascending=True).reset_index(drop=True)
    ax = _axes(ax, style.COLUMN_IN, 0.7 + 0.32 * max(len(t), 1))
    y = np.arange(len(t))
    h = 0.38
    for off, col, colour, name in ((h / 2, "S1", style.PALETTE["blue"], "first order S1"),
                                   (-h / 2, "ST", style.PALETTE["orange"], "total order ST")):
        ax.barh(y + off, t[col], height=h, xerr=t[f"{col}_conf"], color=colour, label=name,
                error_kw={"lw": 0.8, "capsize": 1.5, "ecolor": "black"})
    ax.axvline(0, color="black", lw=0.6)
    ax.set_yticks(y, t["parameter"])
    ax.set_ylim(-0.6, len(t) - 0.4)
    ax.set_xlabel("Sobol index (share of output variance)")
    ax.set_title(style.metric_label(metric, unit=False))
    ax.legend(loc="best")
    return style.finish(ax, grid_axis="x")


@_styled
def plot_counterfactual(table: pd.DataFrame, metric: str, ax: Axes | None = None) -> Axes:
    """Forest plot: each policy variant's paired difference from the baseline with its 95% CI.

    `table`: columns metric, variant, baseline_mean, variant_mean, diff_mean, diff_ci_low,
    diff_ci_high (as counterfactual.csv). The variant's and the baseline's means are written on
    the right.
    """
    t = table[table["metric"] == metric].reset_index(drop=True)
    ax = _axes(ax, style.COLUMN_IN, 0.7 + 0.34 * max(len(t), 1))
    y = np.arange(len(t))[::-1]
    m, lo, hi = (t[c].to_numpy(float) for c in ("diff_mean", "diff_ci_low", "diff_ci_high"))
    ax.axvline(0, color="black", lw=0.7)
    ax.errorbar(m, y, xerr=[m - lo, hi - m], fmt="s", color=style.PALETTE["vermillion"], ms=4,
                lw=1.4)
    unit = style.metric_unit(metric)
    f = {"pct": style.fmt_pct, "bn": style.fmt_bn}.get(unit, style.fmt_num)
    for yi, (_, r) in zip(y, t.iterrows()):
        ax.annotate(f"{f(r['baseline_mean'])} → {f(r['variant_mean'])}", (1.02, yi),
                    xycoords=("axes fraction", "data"), va="center", fontsize=style.SMALL_PT - 0.5)
    ax.set_yticks(y, t["variant"])
    ax.set_ylim(-0.6, len(t) - 0.4)
    _unit_axis(ax, metric, "x", diff=True)
    unit_text = {"pct": "percentage points", "bn": "CNY bn"}.get(unit)
    ax.set_xlabel("difference from baseline" + (f" ({unit_text})" if unit_text else ""))
    ax.set_title(style.metric_label(metric, unit=False))
    return style.finish(ax, grid_axis="x")
