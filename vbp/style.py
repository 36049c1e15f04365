"""One figure style for every vbp plot: journal-column sizes, colour-blind-safe colours, unit formats.

The palette is Okabe & Ito's (2008), distinguishable with the common colour-vision deficiencies and
in greyscale by marker. Sizes follow a two-column journal page: one column is 89 mm (3.5 in), the
full width 183 mm (7.2 in); text is 7-8 pt at print size. Nothing is changed globally: the rc
settings apply inside `style.context()` only, and `finish` sets tick and label sizes on an Axes
explicitly so a figure drawn later outside the context keeps them.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

__all__ = [
    "COLUMN_IN", "CYCLE", "DOUBLE_IN", "FONT_PT", "GREY", "PALETTE", "RC", "SMALL_PT", "bn_axis",
    "context", "finish", "fmt_bn", "fmt_num", "fmt_pct", "metric_label", "metric_unit",
    "percent_axis", "thousands_axis"
]

PALETTE = {  # Okabe-Ito
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00",
    "sky": "#56B4E9", "purple": "#CC79A7", "yellow": "#F0E442", "black": "#000000",
}
CYCLE = tuple(PALETTE[k] for k in ("blue", "orange", "green", "vermillion", "sky", "purple", "black",
                                   "yellow"))
GREY = "#8C8C8C"
COLUMN_IN = 3.5  # one journal column, inches (89 mm)
DOUBLE_IN = 7.2  # full page width, inches (183 mm)
FONT_PT = 8.0
SMALL_PT = 7.0

RC: dict = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # shipped with matplotlib: identical output everywhere
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": SMALL_PT,
    "ytick.labelsize": SMALL_PT,
    "legend.fontsize": SMALL_PT,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "axes.prop_cycle": mpl.cycler(color=list(CYCLE)),
    "axes.grid": False,
    "grid.linewidth": 0.4,
    "grid.color": "#DDDDDD",
    "lines.linewidth": 1.2,
    "lines.markersize": 4.0,
    "errorbar.capsize": 0.0,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 3.0,
    "ytick.major.size": 3.0,
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,  # embed TrueType: text stays editable and searchable in PDF
    "svg.fonttype": "none",
    "svg.hashsalt": "vbp",  # deterministic SVG ids
    "image.cmap": "viridis",
}


def context() -> AbstractContextManager:
    """The vbp rc settings for the duration of a `with` block (figure creation and saving)."""
    return mpl.rc_context(RC)


def finish(ax: Axes, *, grid_axis: str | None = "y") -> Axes:
    """Apply sizes and a light grid explicitly, so the Axes looks the same wherever it is drawn."""
    ax.tick_params(labelsize=SMALL_PT, width=0.6, length=3.0)
    ax.xaxis.label.set_fontsize(FONT_PT)
    ax.yaxis.label.set_fontsize(FONT_PT)
    ax.title.set_fontsize(FONT_PT)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if grid_axis:
        ax.grid(True, axis=grid_axis, linewidth=0.4, color="#DDDDDD")
        ax.set_axisbelow(True)
    return ax


def percent_axis(ax: Axes, which: str = "y", *, points: bool = False) -> None:
    """Format a fraction axis (0.53) as percent (53%), or as percentage points for differences."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    if points:
        axis.set_major_formatter(FuncFormatter(lambda v, _: _signed(100 * v)))
    else:
        axis.set_major_formatter(FuncFormatter(lambda v, _: _tick(100 * v, None) + "%"))


def _signed(v: float) -> str:
    text = f"{v:+.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("+0", "-0") else text


def _tick(v: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{v:,.{decimals}f}"
    text = f"{v:,.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def thousands_axis(ax: Axes, which: str = "y", decimals: int | None = None) -> None:
    """Format an axis with thousands separators (1,234; 2.5); `decimals=None` drops trailing zeros."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v, decimals)))


def bn_axis(ax: Axes, which: str = "y") -> None:
    """Format a CNY-billion axis with thousands separators; the unit belongs in the axis label."""
    thousands_axis(ax, which)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def fmt_pct(value, decimals: int = 1) -> str:
    """0.531 -> '53.1%'; missing -> '—'."""
    return f"{100 * value:.{decimals}f}%" if _finite(value) else "—"


def fmt_bn(value, decimals: int = 1) -> str:
    """1234.5 (CNY bn) -> '¥1,234.5 bn'; missing -> '—'."""
    return f"¥{value:,.{decimals}f} bn" if _finite(value) else "—"


def fmt_num(value, decimals: int = 1) -> str:
    """12345.6 -> '12,345.6'; whole numbers without decimals; missing -> '—'."""
    if not _finite(value):
        return "—"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{decimals}f}"


def metric_unit(name: str) -> str:
    """'pct' for cuts and shares (fractions), 'bn' for CNY bn amounts, else 'count'."""
    base = name.split(".", 1)[0]
    if base.endswith("_bn"):
        return "bn"
    if "cut" in base or "share" in base:
        return "pct"
    return "count"


_NAMES = {
    "drug_avg_cut": "average cut, drugs",
    "joint_avg_cut": "average cut, joints",
    "stent_avg_cut": "average cut, stents",
    "cumulative_savings_2021_bn": "realised savings to end-2021",
    "avg_cut": "average cut",
    "max_cut": "largest cut",
    "annual_savings_bn": "annual savings",
    "winning_products": "winning products",
    "winning_firms": "winning firms",
    "winner_share": "winner share",
}


def metric_label(name: str, *, unit: bool = True) -> str:
    """A readable axis label for a metric column, with its unit: 'average cut, batch7 (%)'."""
    base, _, rnd = name.partition(".")
    text = _NAMES.get(base, base.replace("_", " "))
    if rnd:
        text = f"{text}, {rnd}"
    if not unit:
        return text
    return text + {"pct": " (%)", "bn": " (CNY bn)", "count": ""}[metric_unit(name)]
