"""A user's corrections: points that say "this" (label 1) or "not this" (label 0), joined with the
model's point to re-prompt the segmenter.

How they join (docs/settings.md, "Correcting a mask"):

- Points are (x, y) in the original image's pixels (a video's: the key frame's, `Prediction.frame`),
  0 <= x <= width and 0 <= y <= height, as the model's point is.
- The model's point (the heatmap's argmax) stays the first positive point; the user's points follow
  in the order given, and the segmenter is prompted with all of them (SAM2's multi-point prompt; the
  flood fill's union of the positive points' regions minus the negative points' regions).
- A user's negative point that lands on the mask the model's point gives alone, or within `NEAR`
  pixels of the model's point, drops the model's point: the user says "not this". So one negative
  click on the wrong object and one positive click on the right one move the mask.
- With no positive point left the mask is empty: nothing is pointed at.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from refam.errors import ConfigError
from refam.types import Point

NEAR = 8.0  # pixels: a negative click this close to the model's point (its star) removes it

FORM = "(x, y, label) with label 1 (add) or 0 (remove), x and y in the image's pixels"


def pixel(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """The (column, row) of the pixel a point (x, y) lands on, clamped into the image (a point on
    the right or bottom edge, x = width, lands on the last pixel): pixel i covers [i, i + 1)."""
    return int(min(max(math.floor(x), 0), width - 1)), int(min(max(math.floor(y), 0), height - 1))


def check_inside(point: Point, width: int, height: int, name: str) -> Point:
    """`point` when it lies in a `width` x `height` image, else a ConfigError naming `name` (the
    argument or option the user gave it as)."""
    if not (0 <= point.x <= width and 0 <= point.y <= height):
        raise ConfigError(f"{name}: (x={point.x:g}, y={point.y:g}) lies outside the image ({width}x{height}); "
                          "points are (x, y) in the original image's pixels")
    return point


def as_point(value: object, name: str) -> Point:
    """A user's point from a `Point` or an (x, y, label) tuple, checked: finite numbers, label 0 or 1."""
    if isinstance(value, Point):
        x, y, label = value.x, value.y, value.label
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        x, y, label = value
    else:
        raise ConfigError(f"{name}: a point is {FORM}, got {value!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
        raise ConfigError(f"{name}: x and y must be finite numbers (pixels), got {value!r}")
    if isinstance(label, bool) or label not in (0, 1):
        raise ConfigError(f"{name}: the label must be 1 (add) or 0 (remove), got {label!r}")
    return Point(float(x), float(y), int(label), "user")


def _is_point(value: object) -> bool:
    """Whether an item of `points` is one point (a `Point`, or a tuple of values that are not
    themselves points or lists), not a list of points (an empty list is an empty list of points)."""
    return isinstance(value, Point) or (isinstance(value, (tuple, list)) and bool(value)
                                        and not isinstance(value[0], (tuple, list, Point)))


def user_points(points: object, count: int, width: int, height: int, name: str = "points") -> list[list[Point]]:
    """The user's points per expression, checked (`as_point`, `check_inside`), from what
    `RefAM.segment(..., points=)` takes: None, a flat list of points for one expression, or a list
    of such lists, one per expression (empty for none). Errors name the argument and the index."""
    if points is None:
        return [[] for _ in range(count)]
    if not isinstance(points, (list, tuple)):
        raise ConfigError(f"{name}: give a list of {FORM}, or one such list per expression; got {points!r}")
    if all(_is_point(p) for p in points):  # flat (an empty list: no points)
        if points and count != 1:
            raise ConfigError(f"{name}: a flat list of points is for one expression; with {count} expressions "
                              "give one list of points per expression (empty for none)")
        groups, prefixes = [list(points)] + [[] for _ in range(count - 1)], [name] * count
    elif len(points) != count:
        raise ConfigError(f"{name}: {len(points)} lists of points for {count} expression(s); give one list "
                          "per expression (empty for none)")
    else:
        prefixes = [f"{name}[{k}]" for k in range(count)]
        for prefix, group in zip(prefixes, points):
            if not isinstance(group, (list, tuple)):
                raise ConfigError(f"{prefix}: give a list of {FORM}, got {group!r}")
        groups = [list(group) for group in points]
    return [[check_inside(as_point(p, f"{prefix}[{i}]"), width, height, f"{prefix}[{i}]") for i, p in enumerate(group)]
            for group, prefix in zip(groups, prefixes)]


def by_index(points: object, count: int, width: int, height: int, name: str = "points") -> dict[str, list[Point]] | None:
    """`user_points` keyed by expression ids "0", "1", ... (the ids `RefAM` gives a call's
    expressions), for the expressions that have points; None for None (no correction asked)."""
    if points is None:
        return None
    return {str(k): group for k, group in enumerate(user_points(points, count, width, height, name)) if group}


def joined(model_point: Sequence[float], user: Sequence[Point], model_mask: np.ndarray) -> list[Point]:
    """The points that prompt the segmenter for one expression: the model's point first, then the
    user's, the model's left out when a user's negative point lands on `model_mask` (bool [H, W],
    what the model's point gives alone) or within `NEAR` pixels of it (the module docstring)."""
    model = Point(float(model_point[0]), float(model_point[1]), 1, "model")
    height, width = model_mask.shape

    def says_not_this(point: Point) -> bool:
        column, row = pixel(point.x, point.y, width, height)
        return point.label == 0 and (bool(model_mask[row, column])
                                     or math.hypot(point.x - model.x, point.y - model.y) <= NEAR)

    return list(user) if any(says_not_this(p) for p in user) else [model, *user]
