"""Point accuracy (PA): does the selected point land on the referred object?"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from refam.metrics.iou import _as_bool_tensor
from refam.metrics.ratio import PercentOfSums


def point_hit(point: tuple[float, float] | Tensor, target: Tensor | np.ndarray) -> bool:
    """Whether the pixel containing `point` = (x, y) in pixels lies in the bool mask `target` [H, W].

    Pixel (row i, column j) covers [j, j+1) × [i, i+1), so the point's pixel is (floor(y), floor(x)).
    Points on or past the border are clamped into the image: a selector that returns x == W (the
    right edge of the last patch) still names the last column rather than being a miss by fiat.
    """
    target = _as_bool_tensor(target, "target")
    if target.ndim != 2:
        raise ValueError(f"target must be a 2-D mask [H, W], got shape {tuple(target.shape)}")
    if isinstance(point, Tensor):
        if point.numel() != 2:
            raise ValueError(f"point must hold two numbers (x, y), got shape {tuple(point.shape)}")
        x, y = (float(v) for v in point.reshape(2).tolist())
    else:
        x, y = (float(v) for v in point)
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"point must be finite, got (x={x}, y={y})")
    height, width = target.shape
    col = min(max(math.floor(x), 0), width - 1)
    row = min(max(math.floor(y), 0), height - 1)
    return bool(target[row, col].item())


class PointAccuracy(PercentOfSums):
    """PA: the share of expressions whose point falls inside the ground-truth mask, x100."""

    numerator, denominator = "hits", "count"
    hits: Tensor
    count: Tensor

    def update(self, point: tuple[float, float] | Tensor | None = None, target: Tensor | np.ndarray | None = None, *,
               hit: bool | None = None) -> None:
        """One expression: its point and mask, or `hit` computed before (a stored result)."""
        self.hits += int(hit if hit is not None else point_hit(point, target))
        self.count += 1
