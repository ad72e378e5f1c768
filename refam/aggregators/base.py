"""Aggregators: per-token maps -> one heatmap per expression."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from refam.aggregators.gas import detect_sinks
from refam.config import Configurable
from refam.errors import ConfigError
from refam.types import TokenInfo, TokenMaps


@dataclass
class Aggregation:
    heatmaps: torch.Tensor  # [K, h, w] (video: [K, F, h, w]) min-max normalised to [0, 1] per expression
    probabilities: torch.Tensor  # [K, T, h, w] (video: [K, T, F, h, w]) per-patch distribution over tokens
    kept: torch.Tensor  # [K, T] bool: tokens averaged into the heatmap
    sinks: torch.Tensor  # [K, T] bool: global attention sinks found


class Aggregator(Configurable, abc.ABC):
    @abc.abstractmethod
    def __call__(self, maps: TokenMaps, keep: torch.Tensor) -> Aggregation:
        """`keep` [K, T] is the magnet strategy's choice of tokens."""


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of a [K, ...] stack (a video's frames together) to [0, 1]; a flat
    map becomes zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp(min=torch.finfo(maps.dtype).tiny)
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps - low.view(shape)) / span.view(shape)


GAS_HANDLING = ("report", "drop", "redirect")


class SoftmaxMeanAggregator(Aggregator):
    """The paper's aggregation (appendix B): softmax across the expression's tokens at every patch,
    drop the filtered tokens, average the rest.

    Args:
        gas_factor: a token is a global attention sink if its text-to-text mass exceeds this many
            times the expression's mean (the paper uses 10).
        gas: what happens to a detected sink that would be averaged (a kept token; sinks on stop
            words and magnets are dropped anyway):
            - "report" (default): nothing; sinks are detected and reported per expression;
            - "drop": leave it out of the average (the paper's "suppress"), unless it is the only
              kept token;
            - "redirect": move its surplus onto the magnets (see `redirect_sinks`), keep its
              map. Needs maps of kind "logits" (the extractor's softmax_stage "after_mean").
    """

    def __init__(self, gas_factor: float = 10.0, gas: str = "report") -> None:
        if gas not in GAS_HANDLING:
            raise ConfigError(f"must be one of {list(GAS_HANDLING)}, got {gas!r}", field="gas")
        self.gas_factor = gas_factor
        self.gas = gas

    def __call__(self, maps: TokenMaps, keep: torch.Tensor) -> Aggregation:
        valid = maps.valid
        sinks = detect_sinks(maps.text_mass, valid, self.gas_factor)
        kept = keep & valid
        scores = maps.scores
        if self.gas == "redirect":
            if maps.kind != "logits":
                raise ConfigError(
                    "'redirect' moves logit mass before the softmax across tokens, but the extractor gives "
                    "per-head probabilities (softmax_stage 'per_head'): use softmax_stage 'after_mean' or gas 'drop'",
                    field="gas",
                )
            scores = redirect_sinks(scores, valid, sinks & kept, magnet_mask(maps.tokens, valid.shape[1]))
        per_token = valid.view(valid.shape + (1,) * (scores.dim() - 2))  # [K, T, 1, ...]
        if maps.kind == "logits":
            logits = scores.masked_fill(~per_token, float("-inf"))
            probabilities = logits.softmax(dim=1).nan_to_num(0.0)
        else:
            probabilities = scores * per_token
        if self.gas == "drop":
            without_sinks = kept & ~sinks
            # never drop every token: an expression whose only kept token is a sink keeps it
            kept = torch.where(without_sinks.any(dim=1, keepdim=True), without_sinks, kept)
        weights = kept.float() / kept.sum(dim=1, keepdim=True).clamp(min=1)
        heat = torch.einsum("kt...,kt->k...", probabilities, weights)
        return Aggregation(heatmaps=normalise(heat), probabilities=probabilities, kept=kept, sinks=sinks)


def magnet_mask(tokens: list[list[TokenInfo]], length: int) -> torch.Tensor:
    """[K, T] bool: the appended magnet tokens of each expression."""
    mask = torch.zeros(len(tokens), length, dtype=torch.bool)
    for k, row in enumerate(tokens):
        for t, token in enumerate(row[:length]):
            mask[k, t] = token.magnet and not token.special
    return mask


def redirect_sinks(logits: torch.Tensor, valid: torch.Tensor, sinks: torch.Tensor, magnets: torch.Tensor) -> torch.Tensor:
    """Lower each sink's logits by its surplus over the magnets, so the softmax across tokens hands
    that surplus to the other tokens (magnets first, being the strongest background attractors).

    A sink takes "unusually high and nearly uniform attention" (paper, section 3.3): a constant lift
    of its logits over every patch, which in the per-patch softmax squeezes every other token and
    flattens its own map. The surplus is its spatial mean logit minus the magnets' mean spatial mean
    logit; subtracting it keeps the sink's spatial pattern (what it says about the image) and puts it
    on the magnets' level. Expressions with no magnets measure the surplus against their other
    non-sink tokens. Our reading of "redirected onto auxiliary tokens" (the paper gives no formula).
    """
    logits = logits.clone()
    level = logits.flatten(2).mean(dim=2)  # [K, T] spatial (and temporal) mean logit of each token
    for k in range(logits.shape[0]):
        if not sinks[k].any():
            continue
        reference = magnets[k] & valid[k] & ~sinks[k]
        if not reference.any():
            reference = valid[k] & ~sinks[k]
        if not reference.any():
            continue
        target = level[k][reference].mean()
        surplus = (level[k] - target).clamp(min=0.0) * sinks[k]
        logits[k] -= surplus.view(surplus.shape + (1,) * (logits.dim() - 2))
    return logits
