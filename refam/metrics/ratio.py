"""A score that is one sum over another, x100, kept as two summable states so that the multi-GPU
result (states summed across ranks) equals the single-GPU result exactly."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PercentOfSums(Metric):
    """`numerator` / `denominator` x 100 over everything updated, 0 when the denominator is 0
    (nothing scored reads 0, not NaN). Subclasses name the two states and `update` them."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    numerator: str
    denominator: str
    numerator_dtype: torch.dtype = torch.int64

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state(self.numerator, default=torch.tensor(0, dtype=self.numerator_dtype), dist_reduce_fx="sum")
        self.add_state(self.denominator, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def compute(self) -> Tensor:
        numerator, denominator = getattr(self, self.numerator), getattr(self, self.denominator)
        if denominator == 0:
            return torch.zeros((), dtype=torch.float64, device=numerator.device)
        return numerator.double() / denominator.double() * 100.0
