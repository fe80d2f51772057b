"""Choosing the negation coefficient lambda (pure logic; no model in here).

The paper's rule: among the evaluated lambdas whose retain accuracy is >= threshold x the retain
accuracy of the unmodified model, take the one with the lowest forget accuracy; comparisons are
strict, so a tie goes to the smallest lambda. When no lambda passes the retain bar there is no
choice (None); callers report it instead of inventing one.

The fast search assumes retain accuracy falls (roughly) monotonically as lambda grows: it bisects
the grid for the last lambda that still passes the retain bar, then evaluates a few neighbours on
each side and applies the same rule to every point it has evaluated.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from negmerge_cli.core.errors import UsageError, option
from negmerge_cli.results import SearchPoint

MAX_COEFS = 10_000  # each one is a full evaluation; more is a typo, not a search


def parse_coefs(text: str) -> list[float]:
    """``START:STOP:NUM`` (inclusive, like numpy.linspace; the paper's 0:1:21) or ``0,0.5,1``."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            start, stop, count = float(start), float(stop), int(num)
            if count < 1:
                raise ValueError
            if count > MAX_COEFS:
                raise UsageError(f"{option('coefs')} {text!r}: at most {MAX_COEFS:,} coefficients")
            step = (stop - start) / (count - 1) if count > 1 else 0.0
            values = [start + i * step for i in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option('coefs')} {text!r}: use START:STOP:NUM (e.g. 0:1:21) or a list like 0,0.5,1") from None
    if not values:
        raise UsageError(f"{option('coefs')} {text!r}: no coefficients")
    if len(values) > MAX_COEFS:
        raise UsageError(f"{option('coefs')} {text!r}: at most {MAX_COEFS:,} coefficients")
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{option('coefs')} {text!r}: every coefficient must be a finite number")
    return sorted({round(v, 10) for v in values})


def retain_limit(base_retain: float, threshold: float) -> float:
    return threshold * base_retain


def select(points: Sequence[SearchPoint], base_retain: float, threshold: float) -> Optional[SearchPoint]:
    """The paper's choice among ``points`` (any order), or None when none keeps retain accuracy."""
    limit = retain_limit(base_retain, threshold)
    best = None
    for point in sorted(points, key=lambda p: p.coef):
        if point.retain >= limit and (best is None or point.forget < best.forget):
            best = point
    return best


def grid_search(evaluate: Callable[[float], SearchPoint], coefs: Sequence[float], base_retain: float,
                threshold: float) -> tuple[Optional[SearchPoint], list[SearchPoint]]:
    points = [evaluate(c) for c in coefs]
    return select(points, base_retain, threshold), points


def fast_search(evaluate: Callable[[float], SearchPoint], coefs: Sequence[float], base_retain: float,
                threshold: float, refine: int = 2) -> tuple[Optional[SearchPoint], list[SearchPoint]]:
    """Bisection on the retain bar over the sorted grid, then ``refine`` neighbours on each side."""
    coefs = sorted(coefs)
    seen: dict[int, SearchPoint] = {}

    def at(i: int) -> SearchPoint:
        if i not in seen:
            seen[i] = evaluate(coefs[i])
        return seen[i]

    limit = retain_limit(base_retain, threshold)
    passes = lambda i: at(i).retain >= limit
    at(0)  # the smallest lambda (usually 0: the base model, evaluated anyway) always competes
    last = len(coefs) - 1
    if passes(last):
        boundary = last
    elif not passes(0):
        boundary = 0  # nothing passes at the ends; look around the start before giving up
    else:
        low, high = 0, last  # invariant: low passes, high does not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if passes(middle) else (low, middle)
        boundary = low
    for i in range(max(0, boundary - refine), min(last, boundary + refine) + 1):
        at(i)
    points = [seen[i] for i in sorted(seen)]
    return select(points, base_retain, threshold), points
