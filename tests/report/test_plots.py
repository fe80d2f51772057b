"""The figures' style (report/plots.py): a paper column wide, fonts of 7 pt or more, "λ" in every
label, no line cut at 0% or 100%, chosen points that stay visible when they coincide, and the
classifier demo's figure drawn with the same helpers. Built from small synthetic series: no run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from negmerge_cli.report.plots import COLUMN, Choice, Panel, Series, figure_bytes, search_curve, tradeoff_figure

COEFS = [i / 10 for i in range(31)]


def _series(method: str, speed: float, choices=()) -> Series:
    points = tuple((c, 0.2 + 0.5 / (1 + speed * c), 1.0 if c < 1.5 else max(0.3, 1.0 - 0.4 * (c - 1.5))) for c in COEFS)
    return Series(method, points, tuple(choices))


def _texts(figure):
    from matplotlib.text import Text

    figure_bytes(figure, "png")  # lays the figure out
    return [t for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip()]


@pytest.fixture
def panel():
    return Panel("digits", 0.95, 0.95, "forget (digits)", "retain (textures)")


def _two_alike(panel):
    same = Choice(1.0, 0.3, 0.99, "")
    return [(panel, [_series("negmerge", 2.0, [same, Choice(1.5, 0.25, 0.99, "matched retain (lambda 0 to 3)")]),
                     _series("mean", 2.0, [same])])]


def test_the_tradeoff_is_a_column_wide_with_readable_text_and_says_lambda_once(panel):
    figure = tradeoff_figure(_two_alike(panel), "tiny: unlearning digits")
    assert figure.get_size_inches()[0] == pytest.approx(COLUMN)
    texts = _texts(figure)
    assert min(t.get_fontsize() for t in texts) >= 7
    assert not [t.get_text() for t in texts if "lambda" in t.get_text()]  # the setting's "lambda" became λ
    assert any("λ 0 to 3" in t.get_text() for t in texts)


def test_no_accuracy_line_is_cut_and_the_legend_sits_below_the_axes(panel):
    figure = tradeoff_figure(_two_alike(panel))
    figure_bytes(figure, "png")  # lays the figure out
    along, zoomed = figure.axes
    bottom, top = along.get_ylim()
    assert bottom < 0 and top > 100
    assert zoomed.get_ylim()[1] > 100 * max(p[2] for p in _two_alike(panel)[0][1][0].points)
    legend = figure.legends[0].get_window_extent()
    assert legend.y1 <= min(a.get_window_extent().y0 for a in figure.axes) + 1


def test_coinciding_chosen_points_are_spread_apart(panel):
    figure = tradeoff_figure(_two_alike(panel))
    figure_bytes(figure, "png")
    for axes in figure.axes:
        big = [line for line in axes.lines if line.get_markersize() >= 6]
        where = [tuple(line.get_transform().transform(line.get_xydata()[0]).round(1)) for line in big]
        assert len(big) == 3 and len(set(where)) == 3  # NegMerge's and mean's same point drawn side by side


def test_several_datasets_give_a_row_of_two_panels_each(panel):
    other = Panel("dtd", 0.9, 0.95, "forget (dtd)", "retain (imagenet)")
    figure = tradeoff_figure([_two_alike(panel)[0], (other, [_series("negmerge", 1.0)])])
    assert figure.get_size_inches()[0] == pytest.approx(2 * COLUMN) and len(figure.axes) == 4


def test_the_search_curve_keeps_its_100_percent_line_and_says_lambda():
    points = [SimpleNamespace(coef=c, forget=0.6 - 0.1 * c, retain=1.0) for c in (0, 0.5, 1.0)]
    result = SimpleNamespace(points=points, retain_limit=0.95, threshold=0.95, chosen=points[-1], model="m",
                             forget="digits:val", retain="textures:val")
    figure = search_curve(result)
    assert figure.get_size_inches()[0] == pytest.approx(COLUMN)
    assert figure.axes[0].get_ylim()[1] > 100
    texts = _texts(figure)
    assert min(t.get_fontsize() for t in texts) >= 7 and not [t for t in texts if "lambda" in t.get_text()]


def test_the_classifier_demo_figure_uses_the_shared_trade_off():
    from negmerge_cli.demo.classifier import classifier_panel

    curve = [{"coef": c, "df_acc": max(0.0, 1 - c), "dr_acc": 1 - 0.02 * c} for c in (0, 0.5, 1.0, 1.5)]
    rows = {"original": {"dr_acc": 1.0, "df_acc": 1.0}, "retrain": {"df_acc": 0.0, "dr_acc": 1.0},
            "negmerge": {"lambda": 1.0, "oracle_lambda": 1.5}, "mean": {"lambda": 1.0, "oracle_lambda": 1.0}}
    panel, series = classifier_panel({"negmerge": curve, "mean": curve + [{"coef": 2.0, "error": "nan"}]}, rows)
    assert panel.retain_limit == pytest.approx(0.95) and panel.reference == ("retrain (the target)", 0.0, 1.0)
    assert [s.method for s in series] == ["negmerge", "mean"] and len(series[1].points) == 4  # the NaN point left out
    assert [c.setting for c in series[0].choices] == ["", "oracle"]
    figure = tradeoff_figure([(panel, series)])
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "retrain (the target)" in labels and "chosen: retain bar" in labels
