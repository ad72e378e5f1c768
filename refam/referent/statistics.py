"""What one expression's maps say about whether it names anything in the image: the statistics
bench/no_referent.py measures against expressions naming absent objects, and the one a model's
calibration (`refam.referent.calibration`) flags on. One function for both, so that the number the
pipeline flags on is the number that was measured.

All are read from the aggregation's per-patch softmax over the expression's tokens, P[t, patch]:
"heat" is the mean of the kept tokens' P (the heatmap before its min-max normalisation and before any
spatial bias), "rest" the magnets' and the end token's P summed."""

from __future__ import annotations

import math

import numpy as np
import torch

from refam.aggregators.base import Aggregation
from refam.types import TokenMaps

# each statistic, said as a user reads it (the warning names the one a calibration flags on)
STATISTICS = {
    "heat peak": "the heatmap's peak",
    "heat peak / mean": "the heatmap's peak over its mean",
    "heat entropy": "the heatmap's entropy (normalised by log #patches)",
    "heat top-5% share": "the share of the heatmap in its top 5 % of patches",
    "rest at peak": "the attention the magnets and the end token take at the heatmap's peak",
    "rest mean": "the attention the magnets and the end token take, averaged over the image",
    "kept mass at peak": "the attention its words take together at the heatmap's peak",
    "max kept-token P": "the most attention any of its words takes at one place in the image",
    "min kept-token peak": "the least, over its words, of the most attention each takes at one place",
    "min kept-token P at peak": "the least attention any of its words takes at the heatmap's peak",
    "claimed share": "the share of the image where its words together outweigh the magnets and the end token",
    "min kept-token claimed share": "the least, over its words, of the share of the image where it outweighs "
                                    "the magnets and the end token",
    "mask area": "the mask's share of the image",
}


def rest_tokens(maps: TokenMaps, k: int) -> torch.Tensor:
    """[T] bool: expression k's magnets and end token (its special tokens that enter the softmax)."""
    return torch.tensor([bool(v) and (t.magnet or t.special) for t, v in zip(maps.tokens[k], maps.valid[k].tolist())])


def statistics(probabilities: torch.Tensor, kept: torch.Tensor, rest: torch.Tensor, mask: np.ndarray) -> dict[str, float]:
    """Every statistic of `STATISTICS` for one expression: P [T, h, w], kept and rest [T] bool, its mask."""
    p = probabilities.flatten(1).double()  # [T, N]
    heat = p[kept].mean(dim=0)
    peak = int(heat.argmax())
    share = heat / heat.sum()
    rest_map = p[rest].sum(dim=0)
    top = max(1, round(0.05 * heat.numel()))
    return {
        "heat peak": float(heat[peak]),
        "heat peak / mean": float(heat[peak] / heat.mean()),
        "heat entropy": float(-(share * share.clamp(min=1e-12).log()).sum() / math.log(heat.numel())),
        "heat top-5% share": float(share.topk(top).values.sum()),
        "rest at peak": float(rest_map[peak]),
        "rest mean": float(rest_map.mean()),
        "kept mass at peak": float(p[kept][:, peak].sum()),
        "max kept-token P": float(p[kept].max()),
        "min kept-token peak": float(p[kept].max(dim=1).values.min()),
        "min kept-token P at peak": float(p[kept][:, peak].min()),
        "claimed share": float((p[kept].sum(dim=0) > rest_map).double().mean()),
        "min kept-token claimed share": float((p[kept] > rest_map).double().mean(dim=1).min()),
        "mask area": float(np.asarray(mask).mean()),
    }


def expression_statistics(maps: TokenMaps, aggregation: Aggregation, k: int, mask: np.ndarray) -> dict[str, float]:
    """The statistics of an image's expression k, from its maps, their aggregation and the mask its
    point gave (before any user correction)."""
    return statistics(aggregation.probabilities[k], aggregation.kept[k], rest_tokens(maps, k), mask)
