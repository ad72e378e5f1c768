"""Aggregators: per-token maps -> one heatmap per expression."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from refam.aggregators.gas import detect_sinks
from refam.types import TokenMaps


@dataclass
class Aggregation:
    heatmaps: torch.Tensor  # [K, h, w] min-max normalised to [0, 1]
    probabilities: torch.Tensor  # [K, T, h, w] per-patch distribution over each expression's tokens
    kept: torch.Tensor  # [K, T] bool: tokens averaged into the heatmap
    sinks: torch.Tensor  # [K, T] bool: global attention sinks found


class Aggregator(abc.ABC):
    @abc.abstractmethod
    def __call__(self, maps: TokenMaps, keep: torch.Tensor) -> Aggregation:
        """`keep` [K, T] is the magnet strategy's choice of tokens."""


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each [h, w] map of a [K, h, w] stack to [0, 1] (a flat map becomes zeros)."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp(min=torch.finfo(maps.dtype).tiny)
    return (maps - low[:, None, None]) / span[:, None, None]


class SoftmaxMeanAggregator(Aggregator):
    """The paper's aggregation (appendix B): softmax across the expression's tokens at every patch,
    drop the filtered tokens, average the rest.

    Args:
        gas_factor: a token is a global attention sink if its text-to-text mass exceeds this many
            times the expression's mean (the paper uses 10).
        drop_sinks: also drop detected sinks from the average (the paper's "suppress"); by default
            they are only detected and reported.
    """

    def __init__(self, gas_factor: float = 10.0, drop_sinks: bool = False) -> None:
        self.gas_factor = gas_factor
        self.drop_sinks = drop_sinks

    def __call__(self, maps: TokenMaps, keep: torch.Tensor) -> Aggregation:
        valid = maps.valid
        if maps.kind == "logits":
            logits = maps.scores.masked_fill(~valid[:, :, None, None], float("-inf"))
            probabilities = logits.softmax(dim=1).nan_to_num(0.0)
        else:
            probabilities = maps.scores * valid[:, :, None, None]
        sinks = detect_sinks(maps.text_mass, valid, self.gas_factor)
        kept = keep & valid
        if self.drop_sinks:
            without_sinks = kept & ~sinks
            # never drop every token: an expression whose only kept token is a sink keeps it
            kept = torch.where(without_sinks.any(dim=1, keepdim=True), without_sinks, kept)
        weights = kept.float() / kept.sum(dim=1, keepdim=True).clamp(min=1)
        heat = torch.einsum("kthw,kt->khw", probabilities, weights)
        return Aggregation(heatmaps=normalise(heat), probabilities=probabilities, kept=kept, sinks=sinks)
