"""Region-overlap scores for referring segmentation (conventions: docs/settings.md, Evaluation).

One `update` is one (expression, prediction) pair. States are plain sums so that the
multi-GPU result (states summed across ranks) equals the single-GPU result exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from refam.metrics.ratio import PercentOfSums


def _as_bool_tensor(mask: Tensor | np.ndarray, what: str) -> Tensor:
    mask = torch.as_tensor(mask)
    # A float or 0/255 mask silently turned into bool would hide a missing threshold upstream.
    if mask.dtype != torch.bool:
        raise TypeError(f"{what} must be a bool mask, got dtype {mask.dtype}; threshold it first (e.g. mask > 0.5)")
    return mask


def intersection_union(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> tuple[int, int]:
    """Pixel counts `(|pred ∧ target|, |pred ∨ target|)` of two bool masks of the same shape."""
    pred = _as_bool_tensor(pred, "pred")
    target = _as_bool_tensor(target, "target").to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and target "
            f"{tuple(target.shape)}; predict at the image's original resolution"
        )
    return int((pred & target).sum().item()), int((pred | target).sum().item())


def iou(pred: Tensor | np.ndarray | None = None, target: Tensor | np.ndarray | None = None, *,
        counts: tuple[int, int] | None = None) -> float:
    """Mask IoU |pred ∧ target| / |pred ∨ target| of two bool masks, or of `counts` = (intersection,
    union) computed before; 0 when the union is empty (both masks empty), as mIoU counts it."""
    inter, union = counts if counts is not None else intersection_union(pred, target)
    return inter / union if union else 0.0


class MeanIoU(PercentOfSums):
    """mIoU: the mean over expressions of I/U (IoU = 0 when U = 0), x100."""

    numerator, denominator, numerator_dtype = "iou_sum", "count", torch.float64
    iou_sum: Tensor
    count: Tensor

    def update(self, pred: Tensor | np.ndarray | None = None, target: Tensor | np.ndarray | None = None, *,
               counts: tuple[int, int] | None = None) -> None:
        """One expression: its masks, or `counts` = (intersection, union) computed before (a stored result)."""
        self.iou_sum += iou(pred, target, counts=counts)
        self.count += 1


class OverallIoU(PercentOfSums):
    """oIoU: sum of I / sum of U over all expressions, x100 (0 when the sum of U is 0). Large objects weigh more than in mIoU."""

    numerator, denominator = "inter", "union"
    inter: Tensor
    union: Tensor

    def update(self, pred: Tensor | np.ndarray | None = None, target: Tensor | np.ndarray | None = None, *,
               counts: tuple[int, int] | None = None) -> None:
        """One expression: its masks, or `counts` = (intersection, union) computed before (a stored result)."""
        inter, union = counts if counts is not None else intersection_union(pred, target)
        self.inter += inter
        self.union += union
