"""The forget/retain trade-off curve as a PNG, drawn with Pillow (no matplotlib needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw

from negmerge_cli import files
from negmerge_cli.results import SearchPoint

WIDTH, HEIGHT = 720, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 30, 40, 60
FORGET, RETAIN, LIMIT, CHOSEN, AXIS = (214, 39, 40), (31, 119, 180), (120, 120, 120), (44, 160, 44), (0, 0, 0)


def draw_tradeoff(points: Sequence[SearchPoint], base_retain: float, threshold: float, chosen: Optional[SearchPoint],
                  path: Path, title: str = "", force: bool = False) -> Path:
    """Accuracy (%) against lambda: forget (red), retain (blue), retain bar (grey), choice (green)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    points = sorted(points, key=lambda p: p.coef)
    low, high = points[0].coef, points[-1].coef
    span = (high - low) or 1.0
    x = lambda coef: LEFT + (coef - low) / span * (WIDTH - LEFT - RIGHT)
    y = lambda accuracy: HEIGHT - BOTTOM - accuracy * (HEIGHT - TOP - BOTTOM)

    _axes(draw, low, high, x, y)
    limit = threshold * base_retain
    _dashed(draw, (x(low), y(limit)), (x(high), y(limit)), LIMIT)
    if chosen is not None:
        _dashed(draw, (x(chosen.coef), y(0)), (x(chosen.coef), y(1)), CHOSEN)
    for color, value in ((FORGET, lambda p: p.forget), (RETAIN, lambda p: p.retain)):
        xy = [(x(p.coef), y(value(p))) for p in points]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for px, py in xy:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
    choice = f"lambda = {chosen.coef:g}" if chosen else "no lambda keeps retain accuracy"
    legend = [(FORGET, "forget acc"), (RETAIN, "retain acc"), (LIMIT, f"{threshold:g} x base retain"),
              (CHOSEN, choice)]
    for row, (color, text) in enumerate(legend):
        top = TOP + 8 + 16 * row
        draw.rectangle((WIDTH - 250, top + 3, WIDTH - 238, top + 11), fill=color)
        draw.text((WIDTH - 232, top), text, fill=AXIS)
    if title:
        draw.text((LEFT, 12), title, fill=AXIS)
    with files.PendingFile(path, force=force) as pending:
        image.save(pending.handle, format="PNG")
    return Path(path)


def _axes(draw, low, high, x, y) -> None:
    draw.line((x(low), y(0), x(high), y(0)), fill=AXIS)
    draw.line((x(low), y(0), x(low), y(1)), fill=AXIS)
    for percent in range(0, 101, 20):
        level = y(percent / 100)
        draw.line((x(low) - 4, level, x(low), level), fill=AXIS)
        draw.text((x(low) - 34, level - 6), f"{percent}%", fill=AXIS)
    for i in range(6):
        coef = low + (high - low) * i / 5
        draw.line((x(coef), y(0), x(coef), y(0) + 4), fill=AXIS)
        draw.text((x(coef) - 10, y(0) + 8), f"{coef:.2f}", fill=AXIS)
    draw.text(((x(low) + x(high)) / 2 - 20, HEIGHT - 24), "lambda", fill=AXIS)


def _dashed(draw, start, end, color, dash: int = 6) -> None:
    (x0, y0), (x1, y1) = start, end
    length = max(abs(x1 - x0), abs(y1 - y0), 1)
    for i in range(0, int(length), dash * 2):
        a, b = i / length, min(i + dash, length) / length
        draw.line((x0 + (x1 - x0) * a, y0 + (y1 - y0) * a, x0 + (x1 - x0) * b, y0 + (y1 - y0) * b), fill=color, width=1)
