"""Spatial bias: positional priors from the expression's position words, as HybridGL applies them.

`DirectionPrior` reproduces HybridGL's `extract_dir_phrase` + `gen_dir_mask`
(fhgyuanshen/HybridGL utils.py at f7eb19b; see docs/settings.md):
- the position word (left / right / middle|between / up|top|above / down|under|bottom|low) whose
  syntactic head comes first in the sentence is the expression's direction;
- its prior over the heatmap grid's columns is `linspace(1, 0, W)` for left, `linspace(0, 1, W)` for
  right, and `cat(linspace(0, 1, W // 2), linspace(1, 0, W - W // 2))` for middle;
- HybridGL's released code has the up/down ramps commented out (they give all-ones); `vertical=True`
  turns on the same ramps over rows (up: `linspace(1, 0, H)`, down: `linspace(0, 1, H)`).
The heatmap (min-max normalised) is multiplied by the prior and normalised again; HybridGL divides
by the mean instead, which changes no argmax.
"""

from __future__ import annotations

import abc

import torch

from refam.aggregators.base import normalise
from refam.text.parsing import ExpressionParser


class SpatialBias(abc.ABC):
    @abc.abstractmethod
    def __call__(self, heatmaps: torch.Tensor, expressions: list[str]) -> torch.Tensor:
        """[K, h, w] heatmaps of K expressions -> biased [K, h, w] heatmaps in [0, 1]."""


def ramp(direction: str, rows: int, cols: int, vertical: bool = False) -> torch.Tensor:
    """HybridGL's positional prior on a rows x cols grid (all ones when there is no direction)."""
    if direction == "left":
        line = torch.linspace(1, 0, cols)
    elif direction == "right":
        line = torch.linspace(0, 1, cols)
    elif direction == "middle":
        line = torch.cat([torch.linspace(0, 1, cols // 2), torch.linspace(1, 0, cols - cols // 2)])
    elif vertical and direction in ("up", "down"):
        column = torch.linspace(1, 0, rows) if direction == "up" else torch.linspace(0, 1, rows)
        return column[:, None].expand(rows, cols).clone()
    else:
        return torch.ones(rows, cols)
    return line[None, :].expand(rows, cols).clone()


class DirectionPrior(SpatialBias):
    """HybridGL's absolute-position prior (see the module docstring).

    Args:
        parser: spaCy parsing of the expression (its `spacy_model` is a setting).
        vertical: also apply up/down ramps (HybridGL's released code does not).
    """

    def __init__(self, parser: ExpressionParser | None = None, vertical: bool = False) -> None:
        self.parser = parser or ExpressionParser()
        self.vertical = vertical

    def __call__(self, heatmaps: torch.Tensor, expressions: list[str]) -> torch.Tensor:
        _, rows, cols = heatmaps.shape
        priors = torch.stack([ramp(self.parser.direction(text), rows, cols, self.vertical) for text in expressions])
        return normalise(normalise(heatmaps) * priors.to(heatmaps))
