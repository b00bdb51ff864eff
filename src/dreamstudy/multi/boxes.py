"""Region boxes, checked where they are written (params.yaml's multi.regions, `regions.Region`): no torch here,
so that the params schema can check them before anything heavy loads."""

from __future__ import annotations

Box = tuple[float, float, float, float]


def check_box(box) -> Box:
    """`box` as (x0, y0, x1, y1) floats, fractions of the image's width and height (0, 0 = top left); a
    ValueError saying what is wrong otherwise."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"must be 4 numbers (x0, y0, x1, y1), got {box!r}") from None
    if len(values) != 4:
        raise ValueError(f"must be 4 numbers (x0, y0, x1, y1), got {len(values)}: {box!r}")
    if not all(0.0 <= v <= 1.0 for v in values):  # also refuses NaN
        raise ValueError(f"must lie inside [0, 1] (fractions of the image), got {box!r}")
    x0, y0, x1, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"is empty: needs x0 < x1 and y0 < y1, got {box!r}")
    return values
