"""The paper's lambda selection rule and the fast search, on hand-made accuracy curves."""

from __future__ import annotations

import pytest

from negmerge_cli.clip.search import fast_search, grid_search, parse_coefs, select
from negmerge_cli.core.errors import UsageError
from negmerge_cli.results import SearchPoint

GRID = parse_coefs("0:1:21")


def curve(forget, retain):
    return [SearchPoint(c, f, r) for c, f, r in zip(GRID, forget, retain)]


def test_paper_grid_is_21_points_from_0_to_1():
    assert len(GRID) == 21 and GRID[0] == 0.0 and GRID[-1] == 1.0
    assert GRID[9] == 0.45 and GRID[18] == 0.9  # exact decimals, no 0.45000000000000007
    assert parse_coefs("0.5,0,1") == [0.0, 0.5, 1.0]
    with pytest.raises(UsageError):
        parse_coefs("0:1")
    with pytest.raises(UsageError):
        parse_coefs(",")


def test_lowest_forget_among_points_keeping_retain():
    forget = [0.60 - 0.03 * i for i in range(21)]  # falls steadily
    retain = [0.70 - 0.005 * i for i in range(21)]  # 0.70 .. 0.60; bar 0.95 * 0.70 = 0.665
    chosen = select(curve(forget, retain), base_retain=0.70, threshold=0.95)
    assert chosen.coef == 0.35  # retain 0.665 passes (>=), 0.40 gives 0.66 < 0.665
    assert select(curve(forget, retain), base_retain=0.70, threshold=0.5).coef == 1.0


def test_retain_exactly_at_the_bar_passes():
    points = [SearchPoint(0.0, 0.5, 0.8), SearchPoint(0.5, 0.3, 0.4), SearchPoint(1.0, 0.1, 0.39)]
    assert select(points, base_retain=0.8, threshold=0.5).coef == 0.5


def test_ties_go_to_the_smallest_lambda_in_any_input_order():
    points = [SearchPoint(0.9, 0.2, 0.7), SearchPoint(0.3, 0.2, 0.7), SearchPoint(0.6, 0.2, 0.7), SearchPoint(0.0, 0.5, 0.7)]
    assert select(points, base_retain=0.7, threshold=0.95).coef == 0.3


def test_no_feasible_point_gives_none():
    points = [SearchPoint(0.5, 0.2, 0.1), SearchPoint(1.0, 0.1, 0.05)]  # the grid leaves out lambda = 0
    assert select(points, base_retain=0.8, threshold=0.95) is None
    assert fast_search(lambda c: {p.coef: p for p in points}[c], [0.5, 1.0], 0.8, 0.95)[0] is None


def test_a_lower_forget_past_the_bar_is_ignored():
    forget = [0.5] * 10 + [0.4] + [0.0] * 10
    retain = [0.8] * 11 + [0.1] * 10
    assert select(curve(forget, retain), base_retain=0.8, threshold=0.95).coef == 0.5


def _counting(points):
    calls = []

    def evaluate(coef):
        calls.append(coef)
        return next(p for p in points if p.coef == coef)

    return evaluate, calls


@pytest.mark.parametrize("cut", [0, 3, 10, 17, 20])
def test_fast_search_matches_the_grid_on_monotone_curves_with_fewer_evaluations(cut):
    forget = [0.6 - 0.025 * i for i in range(21)]
    retain = [0.8 if i <= cut else 0.5 for i in range(21)]
    points = curve(forget, retain)
    grid_choice, grid_points = grid_search(_counting(points)[0], GRID, 0.8, 0.95)
    evaluate, calls = _counting(points)
    fast_choice, fast_points = fast_search(evaluate, GRID, 0.8, 0.95)
    assert fast_choice == grid_choice == points[cut]
    assert len(set(calls)) == len(calls) <= 11 < len(grid_points)
    assert [p.coef for p in fast_points] == sorted(p.coef for p in fast_points)
