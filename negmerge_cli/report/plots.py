"""Figures with matplotlib: the search curve of one vector, and the trade-off of every method.

matplotlib is imported when a figure is drawn (never at start-up) and only through its
object-oriented API on the Agg canvas, so no display or global backend is involved. A figure is
rendered to bytes and written through :mod:`negmerge_cli.core.files` (atomic: no partial file). The
format follows the file's suffix: PNG, SVG or PDF; the files carry no date, so redrawing the same
results gives the same SVG and PDF bytes. Names from the results (model, datasets, methods,
settings) go into labels through :func:`~negmerge_cli.core.escape.mathtext`: a ``$`` in one is shown,
never read as mathtext.

One style for every figure (CLIP and classifier alike): a paper column wide (3.5 in, fonts of 7 to
8 pt, PNG at 300 dpi), one colour and one marker per method, lambda written "λ", the legend below
the axes, and axis limits with margins so that no line at 0% or 100% is cut. The trade-off is drawn
from family-neutral :class:`Series` (one method's path and its chosen points), so the classifier
demo draws its figure with the same helpers as ``negmerge report --plot``.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.core.escape import mathtext, number
from negmerge_cli.report.readers import short_label
from negmerge_cli.report.rows import HEADLINE, Curve
from negmerge_cli.results import SearchResult

SUFFIXES = {"": "png", ".png": "png", ".svg": "svg", ".pdf": "pdf"}  # PNG unless the suffix says otherwise
_NO_DATE = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}
FORGET, RETAIN, BAR, CHOSEN = "tab:red", "tab:blue", "0.45", "tab:green"
PAPER_GRID_END = 1.0  # the paper's lambda grid is 0 to 1
DPI = 300  # PNG pixels per inch: a 3.5-inch figure is 1,050 pixels wide
COLUMN = 3.5  # inches: one column of a two-column paper
STYLE = {"font.size": 7.5, "axes.titlesize": 8, "axes.labelsize": 7.5, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 8, "lines.linewidth": 1.1,
         "lines.markersize": 3, "axes.linewidth": 0.6, "grid.linewidth": 0.4, "xtick.major.width": 0.6,
         "ytick.major.width": 0.6, "legend.handlelength": 2.2, "legend.columnspacing": 1.2,
         "legend.borderaxespad": 0.2, "legend.frameon": False}
PERCENT = (-3.0, 103.0)  # accuracy axes: 0% and 100% lines stay inside the frame

# one colour and one marker per method, the same in every figure
COLOURS = {"pretrained": "tab:gray", "original": "tab:gray", "best_single": "tab:brown", "sum": "tab:olive",
           "mean": "tab:blue", "ties": "tab:orange", "dare": "tab:pink", "magmax": "tab:purple", "negmerge": "tab:red"}
MARKERS = {"best_single": "v", "sum": "P", "mean": "s", "ties": "^", "dare": "<", "magmax": "D", "negmerge": "o"}
_SPARE = (("tab:cyan", "h"), ("tab:green", ">"), ("black", "p"))


def check_plot_path(path: Path, name: str = "plot") -> str:
    """The figure format for ``path``'s suffix (none: PNG); a one-line error for any other suffix."""
    form = SUFFIXES.get(Path(path).suffix.lower())
    if form is None:
        raise UsageError(f"{option(name)} {path}: name the plot *.png, *.svg or *.pdf (the suffix picks the format)")
    return form


def save(figure, path: Path, force: bool = False) -> Path:
    return files.write_bytes(path, figure_bytes(figure, check_plot_path(path)), force=force)


def figure_bytes(figure, form: str) -> bytes:
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": "negmerge", "svg.fonttype": "none"}):
        figure.savefig(buffer, format=form, dpi=DPI, metadata=_NO_DATE[form], bbox_inches="tight", pad_inches=0.03)
    return buffer.getvalue()


@contextlib.contextmanager
def style():
    """The figures' fonts and line widths (matplotlib reads them when an artist is made)."""
    from matplotlib import rc_context

    with rc_context(STYLE):
        yield


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    figure.get_layout_engine().set(w_pad=0.02, h_pad=0.02, hspace=0.04, wspace=0.04)
    FigureCanvasAgg(figure)
    return figure


def method_style(method: str, index: int = 0) -> tuple[str, str]:
    """(colour, marker) of a method; methods the tables do not know get spare ones by position."""
    spare = _SPARE[index % len(_SPARE)]
    return COLOURS.get(method, spare[0]), MARKERS.get(method, spare[1])


def lambda_text(text: str) -> str:
    """Labels say λ: settings written for tables ("matched retain (lambda 0 to 3)") are relabelled."""
    return text.replace("lambda", "λ")


# -- one vector: accuracy against lambda -----------------------------------------------------------


def search_curve(result: SearchResult, title: str = ""):
    """Forget (red) and retain (blue) accuracy against λ, the retain bar (grey, dashed) and the
    chosen λ (green)."""
    with style():
        figure = _figure(COLUMN, 2.7)
        axes = figure.add_subplot()
        points = sorted(result.points, key=lambda p: p.coef)
        coefs = [p.coef for p in points]
        axes.plot(coefs, [100 * p.forget for p in points], "o-", color=FORGET, label="forget accuracy")
        axes.plot(coefs, [100 * p.retain for p in points], "s-", color=RETAIN, label="retain accuracy")
        axes.axhline(100 * result.retain_limit, color=BAR, linestyle="--", linewidth=0.9,
                     label=f"retain bar: {number(result.threshold, 'g')} × base "
                           f"({number(result.retain_limit, '.1f', scale=100)}%)")
        chosen = result.chosen
        if chosen is not None:
            axes.axvline(chosen.coef, color=CHOSEN, linestyle=":", linewidth=1.2,
                         label=f"chosen λ = {number(chosen.coef, 'g')}")
            axes.plot([chosen.coef] * 2, [100 * chosen.forget, 100 * chosen.retain], "o", color=CHOSEN,
                      markersize=7, markerfacecolor="none", markeredgewidth=1.5, clip_on=False, zorder=4)
        else:
            axes.plot([], [], " ", label="no λ keeps the retain bar")
        axes.set(xlabel="λ (θ = base − λ·τ)", ylabel="top-1 accuracy (%)", ylim=PERCENT, yticks=range(0, 101, 20))
        axes.set_xmargin(0.03)
        axes.set_title(mathtext(title or f"{result.model}: forget {short_label(result.forget)}, "
                                         f"retain {short_label(result.retain)}"), loc="left")
        axes.grid(alpha=0.3)
        figure.legend(loc="outside lower center", ncol=2)
    return figure


# -- every method: its path as lambda grows, and the chosen points -------------------------------------


@dataclass(frozen=True)
class Choice:
    """A chosen point of a method's path; ``setting`` names the rule (HEADLINE: the paper's)."""

    coef: float
    forget: float
    retain: float
    setting: str = HEADLINE


@dataclass(frozen=True)
class Series:
    """One method's path (λ, forget, retain per evaluated λ, fractions, by λ) and its choices."""

    method: str
    points: tuple[tuple[float, float, float], ...]
    choices: tuple[Choice, ...] = ()


@dataclass(frozen=True)
class Panel:
    """What one forget set's pair of panels shows besides the paths."""

    title: str
    retain_limit: float  # the retain bar, a fraction
    threshold: float
    forget_name: str = "forget"
    retain_name: str = "retain"
    reference: Optional[tuple[str, float, float]] = None  # (label, forget, retain): e.g. the retrained model
    settings: Optional[dict] = None  # setting -> legend label of its chosen markers (default: the paper's rule, the name)


def tradeoff(curves: Sequence[Curve], title: str = ""):
    """Every method of ``negmerge report`` (eval --vector JSON): per forget dataset, (a) forget and
    retain accuracy against λ and (b) retain against forget near the retain bar, where the choices
    are made; each method's chosen point per setting (filled: the paper's rule; hollow: another
    setting, such as matched retain on an extended grid)."""
    if not curves:
        raise UsageError(f"{option('plot')}: no search results to plot (the plot needs eval --vector JSON)")
    by_dataset: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_dataset[curve.dataset].append(curve)
    groups = []
    for dataset, group in by_dataset.items():
        first = group[0].search
        panel = Panel(mathtext(dataset), min(c.search.retain_limit for c in group), first.threshold,
                      f"forget ({mathtext(short_label(first.forget))})", f"retain ({mathtext(short_label(first.retain))})")
        groups.append((panel, _series_of(group)))
    return tradeoff_figure(groups, title)


def _series_of(curves: list[Curve]) -> list[Series]:
    series = []
    for method in dict.fromkeys(c.method for c in curves):
        own = [c for c in curves if c.method == method]
        longest = max(own, key=lambda c: max(p.coef for p in c.search.points)).search
        points = sorted(longest.points, key=lambda p: p.coef)
        if points[0].coef != 0:
            points = [longest.base] + points  # the unmodified model, evaluated for the bar
        choices = tuple(Choice(c.search.chosen.coef, c.search.chosen.forget, c.search.chosen.retain, c.setting)
                        for c in own if c.search.chosen is not None)
        series.append(Series(method, tuple((p.coef, p.forget, p.retain) for p in points), choices))
    return series


def tradeoff_figure(groups: Sequence[tuple[Panel, Sequence[Series]]], title: str = ""):
    """The trade-off figure from family-neutral series: one forget set: a column (3.5 in), its two
    panels stacked; several: a row of two panels each (7 in). One legend below for all."""
    with style():
        single = len(groups) == 1
        figure = _figure(COLUMN if single else 2 * COLUMN, 4.6 if single else 2.5 * len(groups) + 0.9)
        panels = figure.subplots(2, 1, squeeze=False).T if single else figure.subplots(len(groups), 2, squeeze=False)
        keys: dict[str, object] = {}
        for (along, zoomed), (panel, series) in zip(panels, groups):
            colours = {s.method: method_style(s.method, i) for i, s in enumerate(series)}
            _lambda_panel(along, panel, series, colours, keys)
            _zoom_panel(zoomed, panel, series, colours, keys)
        if title:
            figure.suptitle(mathtext(title))
        figure.legend(list(keys.values()), list(keys), loc="outside lower center", ncol=2 if single else 4)
    return figure


def _drawing_order(series: Sequence[Series]) -> list[Series]:
    """NegMerge last, so that no baseline hides its path (mean's often runs on top of it)."""
    return sorted(series, key=lambda s: s.method == "negmerge")


def _lambda_panel(axes, panel: Panel, series: Sequence[Series], colours: dict, keys: dict) -> None:
    from matplotlib.lines import Line2D

    for s in series:  # the legend in the series' order
        colour, marker = colours[s.method]
        keys.setdefault(mathtext(s.method), Line2D([], [], color=colour, marker=marker, markersize=3.5))
    for s in _drawing_order(series):
        colour, marker = colours[s.method]
        coefs = [p[0] for p in s.points]
        axes.plot(coefs, [100 * p[1] for p in s.points], "-", marker=marker, color=colour, markersize=2.2,
                  markevery=_every(len(coefs)), zorder=2.5 if s.method == "negmerge" else 2)
        axes.plot(coefs, [100 * p[2] for p in s.points], "--", color=colour, linewidth=0.8, alpha=0.8)
    keys.setdefault(f"(a) {_word(panel.forget_name)}: solid", Line2D([], [], color="0.3", linewidth=1.1))
    keys.setdefault(f"(a) {_word(panel.retain_name)}: dashed", Line2D([], [], color="0.3", linestyle="--", linewidth=0.8))
    _bar(axes, panel, keys)
    if any(s.points[-1][0] > PAPER_GRID_END for s in series):
        axes.axvline(PAPER_GRID_END, color="0.6", linestyle=":", linewidth=0.8, zorder=1)
        keys.setdefault("λ = 1 (the paper's grid ends)", Line2D([], [], color="0.6", linestyle=":", linewidth=0.8))
    axes.set(xlabel="λ", ylabel="accuracy (%)", ylim=PERCENT, yticks=range(0, 101, 20))
    axes.set_xmargin(0.02)
    _chosen(axes, panel, series, colours, keys, lambda choice: choice.coef, lambda choice: 100 * choice.forget)
    axes.set_title(f"(a) {panel.title}: accuracy against λ", loc="left")
    axes.grid(alpha=0.3)


def _zoom_panel(axes, panel: Panel, series: Sequence[Series], colours: dict, keys: dict) -> None:
    from matplotlib.lines import Line2D

    for s in _drawing_order(series):
        colour, marker = colours[s.method]
        axes.plot([100 * p[1] for p in s.points], [100 * p[2] for p in s.points], "-", marker=marker,
                  color=colour, markersize=2.2, zorder=2.5 if s.method == "negmerge" else 2)
    _zoom_limits(axes, panel, series)
    start = series[0].points[0] if series and series[0].points[0][0] == 0 else None
    if start is not None and _inside(axes, 100 * start[1], 100 * start[2]):
        axes.plot(100 * start[1], 100 * start[2], "X", color="black", markersize=6, zorder=4)
        keys.setdefault("start (λ = 0)", Line2D([], [], color="black", marker="X", linestyle="", markersize=5))
    if panel.reference is not None:
        label, forget, retain = panel.reference
        axes.plot(100 * forget, 100 * retain, "*", color="black", markersize=9, zorder=4, clip_on=False)
        keys.setdefault(mathtext(label), Line2D([], [], color="black", marker="*", linestyle="", markersize=7))
    _chosen(axes, panel, series, colours, keys, lambda choice: 100 * choice.forget, lambda choice: 100 * choice.retain)
    _bar(axes, panel, keys)
    axes.set(xlabel=f"{panel.forget_name} accuracy (%), lower is better", ylabel=f"{panel.retain_name} accuracy (%)")
    axes.set_title(f"(b) {panel.title}: near the retain bar", loc="left")
    axes.grid(alpha=0.3)


def _word(name: str) -> str:
    """"forget (digits)" -> "forget": the set's role, for the legend shared by every panel."""
    return name.split(" (")[0]


def _every(count: int) -> int:
    return max(1, count // 12)


def _bar(axes, panel: Panel, keys: dict) -> None:
    from matplotlib.lines import Line2D

    axes.axhline(100 * panel.retain_limit, color="black", linestyle="-.", linewidth=0.8, zorder=1)
    keys.setdefault(f"retain bar ({number(panel.threshold, 'g')} × start)",
                    Line2D([], [], color="black", linestyle="-.", linewidth=0.8))


def _chosen(axes, panel: Panel, series: Sequence[Series], colours: dict, keys: dict, x, y) -> None:
    """Each choice, large with a black edge: filled for the paper's rule (HEADLINE), hollow for
    another setting. Markers that would sit on one another are spread sideways by a few points."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    marks = [(s, c) for s in series for c in s.choices]
    positions = [(x(c), y(c)) for _, c in marks]
    shifts = _spread(axes, positions)
    for (s, choice), (px, py), shift in zip(marks, positions, shifts):
        colour, marker = colours[s.method]
        filled = choice.setting == HEADLINE
        transform = offset_copy(axes.transData, fig=axes.figure, x=shift, y=0, units="points")
        axes.plot(px, py, marker, color=colour, markersize=6.5, markeredgecolor="black" if filled else colour,
                  markeredgewidth=0.8 if filled else 1.4, markerfacecolor=colour if filled else "white",
                  zorder=5 if filled else 4.5, transform=transform)
    settings = panel.settings or {}
    for setting in dict.fromkeys(c.setting for _, c in marks):
        filled = setting == HEADLINE
        label = settings.get(setting) or ("chosen: the paper's rule" if filled else f"chosen: {lambda_text(mathtext(setting))}")
        keys.setdefault(label, Line2D([], [], color="0.45", marker="o", linestyle="", markersize=6,
                                      markeredgecolor="black" if filled else "0.45",
                                      markeredgewidth=0.8 if filled else 1.4,
                                      markerfacecolor="0.45" if filled else "white"))


def _spread(axes, positions: list[tuple[float, float]], near: float = 0.03, step: float = 5.0) -> list[float]:
    """Horizontal shifts in points for markers closer than ``near`` (a fraction of the axes) to an
    earlier one: each group spread evenly around its place."""
    if not positions:
        return []
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    scaled = [((px - x0) / ((x1 - x0) or 1), (py - y0) / ((y1 - y0) or 1)) for px, py in positions]
    groups: list[list[int]] = []
    for index, (sx, sy) in enumerate(scaled):
        for group in groups:
            gx, gy = scaled[group[0]]
            if abs(sx - gx) < near and abs(sy - gy) < near:
                group.append(index)
                break
        else:
            groups.append([index])
    shifts = [0.0] * len(positions)
    for group in groups:
        for rank, index in enumerate(group):
            shifts[index] = (rank - (len(group) - 1) / 2) * step
    return shifts


def _zoom_limits(axes, panel: Panel, series: Sequence[Series]) -> None:
    """Retain accuracy from a little below the bar to the top; forget accuracy from the lowest in
    that band to a little past the highest chosen point (and the reference, when there is one)."""
    bar = 100 * panel.retain_limit
    points = [p for s in series for p in s.points]
    top = max(100 * p[2] for p in points)
    if panel.reference is not None:
        top = max(top, 100 * panel.reference[2])
    low = bar - max(1.5 * (top - bar), 0.5)
    inside = [100 * p[1] for p in points if 100 * p[2] >= low]
    chosen = [100 * c.forget for s in series for c in s.choices]
    extra = [100 * panel.reference[1]] if panel.reference is not None else []
    left = min(inside + chosen + extra)
    right = max(chosen + extra + [left + 1.0])
    right += 0.5 * (right - left)
    margin = 0.05 * (right - left)
    axes.set(ylim=(low, top + 0.12 * (top - low)), xlim=(left - margin, right + margin))


def _inside(axes, x: float, y: float) -> bool:
    (x0, x1), (y0, y1) = axes.get_xlim(), axes.get_ylim()
    return x0 <= x <= x1 and y0 <= y <= y1
