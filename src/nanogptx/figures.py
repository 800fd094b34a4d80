"""The report's figures drawn with matplotlib: a panel of series (curves, bands, crosses) and
their key, as SVG that is the same bytes on every run. Restyle them all in STYLE.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn, not with the module
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
W, H = 460, 300  # one panel, in pixels
# Every figure's matplotlib settings (restyle here): text stays text (searchable, small), never
# math ($ in a run name); a fixed salt and no date (in svg) make reruns identical byte for byte.
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "nanogptx", "text.parse_math": False,
         "font.size": 10, "font.sans-serif": ["DejaVu Sans"], "lines.scale_dashes": False,
         "axes.grid": True, "grid.color": "#eeeeee", "legend.frameon": False}  # fmt: skip
KINDS = ("curve", "band", "marks")  # what panel draws, as SVG group ids: <g id="curve-3">
Series = tuple[str, str, str, list[tuple[float, float]]]  # label, color, style, points


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def color(i: int) -> str:
    """The i-th run's (or variant's) color."""
    return COLORS[i % len(COLORS)]


def _fmt(v: float) -> str:
    """A tick: 20k, 1.5M from ten thousand on (steps, tokens), else as it is (-2.5, 300)."""
    return f"{v / 1e6:g}M" if abs(v) >= 1e6 else f"{v / 1e3:g}k" if abs(v) >= 1e4 else f"{v:g}"


def svg(title: str, draw: Callable[[], Figure]) -> str:
    """The figure draw() makes, in STYLE, as SVG: each series titled with its label (a tooltip
    where the figure is opened alone), its size stated in pixels, for an <img> that shrinks to
    fit its content (the Snakemake report's) has none otherwise; it narrows to the window."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig = draw()
        titles = {}
        for i, artist in enumerate(fig.findobj(lambda a: a.get_gid() in KINDS)):
            artist.set_gid(f"{artist.get_gid()}-{i}")
            titles[artist.get_gid()] = artist.get_label()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Title": title})
    series = f'<g id="((?:{"|".join(KINDS)})-\\d+)">'
    svg = re.sub(
        series, lambda m: f"{m[0]}<title>{html.escape(titles[m[1]])}</title>", buf.getvalue()
    )
    size = r'width="\1" height="\2" \3 style="max-width:100%;height:auto"'  # pt to px
    return re.sub(r'width="([\d.]+)pt" height="([\d.]+)pt" (viewBox="[^"]*")', size, svg, count=1)


def figure(width: int, height: int) -> Figure:
    """An empty figure of width x height pixels (drawn at 72 dpi: 1 pt is 1 px)."""
    from matplotlib.figure import Figure  # not pyplot: no window, no global figure state

    return Figure(figsize=(width / 72, height / 72), layout="constrained")


def _dashes(style: str) -> dict[str, Any]:
    """Train loss dashed and faint; layer i > 0 of a diagnostic in longer dashes."""
    if style == "train":
        return {"linestyle": (0, (4, 3)), "alpha": 0.6}
    if style.startswith("layer") and int(style[5:]):
        return {"linestyle": (0, (2 * int(style[5:]), 2))}
    return {}


def panel(ax: Axes, series: list[Series], x_label: str, y_label: str = "loss") -> None:
    """series on ax; style "train" is dashed, "val" solid (a line of one point: a dot),
    "layer<i>" solid with a dash pattern per layer, "marks" a cross at each point, "band" a
    shaded polygon through the points. Points that are not finite are left out; an axes with
    none is not shown, but for series whose every point is not finite (a run that diverged at
    once) a note says so."""
    drawn = False
    for label, rgb, style, points in series:
        pts = [(x, y) for x, y in points if finite(x) and finite(y)]
        if not pts:
            continue
        drawn, (xs, ys) = True, zip(*pts, strict=True)
        if style == "band":
            ax.fill(xs, ys, color=rgb, alpha=0.15, linewidth=0, gid="band", label=label)
        elif style == "marks":
            ax.plot(
                xs, ys, "x", color=rgb, markersize=10, markeredgewidth=2, gid="marks", label=label
            )
        else:
            dot = {"marker": "o", "markersize": 4} if len(pts) == 1 else {}  # a line of one point
            ax.plot(xs, ys, color=rgb, linewidth=1.6, gid="curve", label=label, **_dashes(style),
                    **dot)  # fmt: skip
    if not drawn:
        ax.set_axis_off()
        if series:  # else a blank panel, as if nothing were wrong
            note = f"{y_label} against {x_label}: no finite values (NaN or inf)"
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
        return
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt(v)))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)


def legend(where: Figure | Axes, keys: Sequence[tuple[str, str | None]], **kw: Any) -> None:
    """A key of (label, color) entries: a line in that color, or none (a note: color None)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=rgb or "none", linewidth=2, label=label) for label, rgb in keys]
    where.legend(handles=handles, handlelength=2.5 if all(c for _, c in keys) else 1.5, **kw)
