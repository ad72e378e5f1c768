"""Region-overlap scores for referring segmentation (conventions: docs/settings.md, Evaluation).

One `update` is one (expression, prediction) pair. States are plain sums so that the
multi-GPU result (states summed across ranks) equals the single-GPU result exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric


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


class MeanIoU(Metric):
    """mIoU: the mean over expressions of I/U (IoU = 0 when U = 0), ×100."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    iou_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor | np.ndarray | None = None, target: Tensor | np.ndarray | None = None, *,
               counts: tuple[int, int] | None = None) -> None:
        """One expression: its masks, or `counts` = (intersection, union) computed before (a stored result)."""
        self.iou_sum += iou(pred, target, counts=counts)
        self.count += 1

    def compute(self) -> Tensor:
        # Same convention as oIoU's empty union: nothing scored reads 0, not NaN.
        if self.count == 0:
            return torch.zeros((), dtype=torch.float64, device=self.iou_sum.device)
        return self.iou_sum / self.count * 100.0


class OverallIoU(Metric):
    """oIoU: ΣI / ΣU over all expressions, ×100 (0 when ΣU = 0). Large objects weigh more than in mIoU."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    inter: Tensor
    union: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("inter", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor | np.ndarray | None = None, target: Tensor | np.ndarray | None = None, *,
               counts: tuple[int, int] | None = None) -> None:
        """One expression: its masks, or `counts` = (intersection, union) computed before (a stored result)."""
        inter, union = counts if counts is not None else intersection_union(pred, target)
        self.inter += inter
        self.union += union

    def compute(self) -> Tensor:
        if self.union == 0:
            return torch.zeros((), dtype=torch.float64, device=self.inter.device)
        return self.inter.double() / self.union.double() * 100.0
