"""Figures with matplotlib: the search curve of one vector, and the trade-off of every method.

matplotlib is imported when a figure is drawn (never at start-up) and only through its
object-oriented API on the Agg canvas, so no display or global backend is involved. A figure is
rendered to bytes and written through :mod:`negmerge_cli.core.files` (atomic: no partial file). The
format follows the file's suffix: PNG, SVG or PDF; the files carry no date, so redrawing the same
results gives the same SVG and PDF bytes. Names from the results (model, datasets, methods,
settings) go into labels through :func:`~negmerge_cli.core.escape.mathtext`: a ``$`` in one is shown,
never read as mathtext.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Sequence

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
DPI = 120


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
        figure.savefig(buffer, format=form, dpi=DPI, metadata=_NO_DATE[form], bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


# -- one vector: accuracy against lambda -----------------------------------------------------------


def search_curve(result: SearchResult, title: str = ""):
    """Forget (red) and retain (blue) accuracy against lambda, the retain bar (grey, dashed) and
    the chosen lambda (green)."""
    figure = _figure(7.0, 4.4)
    axes = figure.add_subplot()
    points = sorted(result.points, key=lambda p: p.coef)
    coefs = [p.coef for p in points]
    axes.plot(coefs, [100 * p.forget for p in points], "o-", color=FORGET, markersize=4, label="forget accuracy")
    axes.plot(coefs, [100 * p.retain for p in points], "s-", color=RETAIN, markersize=4, label="retain accuracy")
    axes.axhline(100 * result.retain_limit, color=BAR, linestyle="--", linewidth=1,
                 label=f"retain bar: {number(result.threshold, 'g')} x base "
                       f"({number(result.retain_limit, '.1f', scale=100)}%)")
    chosen = result.chosen
    if chosen is not None:
        axes.axvline(chosen.coef, color=CHOSEN, linestyle=":", linewidth=1.5, label=f"chosen λ = {number(chosen.coef, 'g')}")
        axes.plot([chosen.coef] * 2, [100 * chosen.forget, 100 * chosen.retain], "o", color=CHOSEN, markersize=8,
                  markerfacecolor="none", markeredgewidth=2)
    else:
        axes.plot([], [], " ", label="no λ keeps the retain bar")
    axes.set(xlabel="λ (θ = base − λ·τ)", ylabel="top-1 accuracy (%)", ylim=(0, 100),
             title=mathtext(title or f"{result.model}: forget {short_label(result.forget)}, "
                                     f"retain {short_label(result.retain)}"))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return figure


# -- every method: retain against forget as lambda grows ---------------------------------------------


def tradeoff(curves: Sequence[Curve], title: str = ""):
    """One row per forget dataset: each method's path through (forget, retain) accuracy as lambda
    grows from 0, the retain bar, and each method's chosen point (circle: the paper's rule; star:
    any other setting, such as matched retain on an extended grid); where a path goes past
    lambda = 1, an open square marks the paper grid's end. Left: every lambda; right: the same,
    zoomed in on the retain bar, where the choices are made."""
    if not curves:
        raise UsageError(f"{option('plot')}: no search results to plot (the plot needs eval --vector JSON)")
    by_dataset: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_dataset[curve.dataset].append(curve)
    figure = _figure(12.5, 4.8 * len(by_dataset))
    panels = figure.subplots(len(by_dataset), 2, squeeze=False)
    for (whole, zoomed), (dataset, group) in zip(panels, by_dataset.items()):
        _tradeoff_panel(whole, group, f"{mathtext(dataset)}: every λ")
        whole.legend(fontsize="small", loc="best")
        _tradeoff_panel(zoomed, group, f"{mathtext(dataset)}: near the retain bar")
        _zoom_on_bar(zoomed, group)
    if title:
        figure.suptitle(mathtext(title))
    return figure


def _tradeoff_panel(axes, curves: list[Curve], title: str) -> None:
    methods = list(dict.fromkeys(c.method for c in curves))
    colours = {m: _colour(m, i) for i, m in enumerate(methods)}
    for method in methods:
        own = [c for c in curves if c.method == method]
        points = _path(max(own, key=lambda c: max(p.coef for p in c.search.points)))
        axes.plot([100 * p.forget for p in points], [100 * p.retain for p in points], ".-", color=colours[method],
                  linewidth=1.2, markersize=3, label=mathtext(method))
        end = next((p for p in points if p.coef == PAPER_GRID_END), None)
        if end is not None and points[-1].coef > PAPER_GRID_END:
            axes.plot(100 * end.forget, 100 * end.retain, "s", color=colours[method], markerfacecolor="none",
                      markersize=7)
        for curve in own:
            chosen = curve.search.chosen
            if chosen is not None:
                axes.plot(100 * chosen.forget, 100 * chosen.retain, "o" if curve.setting == HEADLINE else "*",
                          color=colours[method], markeredgecolor="black",
                          markersize=9 if curve.setting == HEADLINE else 13, zorder=3)
    limits = sorted({round(c.search.retain_limit, 12) for c in curves})
    for limit in limits:
        axes.axhline(100 * limit, color=BAR, linestyle="--", linewidth=1)
    start = curves[0].search.base
    axes.plot(100 * start.forget, 100 * start.retain, "X", color="black", markersize=8, zorder=4,
              label="start (λ = 0)")
    _legend_keys(axes, curves, limits)
    axes.set(xlabel="forget accuracy (%), lower is better", ylabel="retain accuracy (%)", title=title)
    axes.grid(alpha=0.3)


def _path(curve: Curve) -> list:
    """The search's points by lambda, from the unmodified model (evaluated for the bar) on."""
    points = sorted(curve.search.points, key=lambda p: p.coef)
    return points if points[0].coef == 0 else [curve.search.base] + points


def _zoom_on_bar(axes, curves: list[Curve]) -> None:
    """Retain accuracy from a little below the lowest bar to the top; forget accuracy from the
    lowest in that band to a little past the highest chosen point."""
    bar = 100 * min(c.search.retain_limit for c in curves)
    points = [p for c in curves for p in _path(c)]
    top = 100 * max(p.retain for p in points)
    low = bar - max(1.5 * (top - bar), 0.5)
    left = min(100 * p.forget for p in points if 100 * p.retain >= low)
    chosen = [100 * c.search.chosen.forget for c in curves if c.search.chosen is not None]
    right = max(chosen + [left + 1.0])
    right += 0.5 * (right - left)
    margin = 0.05 * (right - left)
    axes.set(ylim=(low, top + 0.1 * (top - low)), xlim=(left - margin, right + margin))


def _legend_keys(axes, curves: list[Curve], limits: list[float]) -> None:
    """Legend entries for the markers (drawn off-axes, only for what the panel shows)."""
    settings = list(dict.fromkeys(c.setting for c in curves if c.search.chosen is not None))
    for setting in settings:
        marker, label = ("o", "chosen: the paper's rule") if setting == HEADLINE else ("*", f"chosen: {mathtext(setting)}")
        axes.plot([], [], marker, color="white", markeredgecolor="black", markersize=9, label=label)
    if any(max(p.coef for p in c.search.points) > PAPER_GRID_END for c in curves):
        axes.plot([], [], "s", color="black", markerfacecolor="none", label="λ = 1 (the paper's grid ends)")
    if limits:
        threshold = curves[0].search.threshold
        axes.plot([], [], "--", color=BAR, label=f"retain bar ({number(threshold, 'g')} x base)")


# one colour per method, the same in every figure
COLOURS = {"pretrained": "tab:gray", "best_single": "tab:brown", "sum": "tab:olive", "mean": "tab:blue",
           "ties": "tab:orange", "dare": "tab:pink", "magmax": "tab:purple", "negmerge": "tab:red"}


def _colour(method: str, index: int) -> str:
    return COLOURS.get(method, ("tab:cyan", "tab:green", "black")[index % 3])
