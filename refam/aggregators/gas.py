"""Global attention sinks (GAS): tokens that take a disproportionate share of text-to-text attention.

The paper marks a token as a sink when the mean text-to-text attention it receives, averaged over
layers (and here heads and query tokens of its expression), is more than `factor` times the mean
over the expression's tokens (factor 10 in the paper). The mean includes the token itself, as the
paper words it, so no token of a T-token sequence can exceed T times the mean: factor 10 can only
fire on expressions (with magnets and EOS) longer than 10 tokens.
"""

from __future__ import annotations

import torch

from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.types import TokenInfo

COLOUR_WORDS = frozenset(
    "red green blue yellow pink purple orange white black brown gray grey silver gold beige tan navy".split()
)


def detect_sinks(text_mass: torch.Tensor, valid: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    """text_mass [K, T], valid [K, T] -> bool [K, T] sinks among the valid tokens."""
    mass = text_mass.masked_fill(~valid, 0.0)
    mean = mass.sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True).clamp(min=1)
    return valid & (mass > factor * mean)


def sink_category(token: TokenInfo) -> str:
    """The paper's breakdown of sinks: stop word, colour, other (special tokens count as stop words)."""
    if token.special or token.word in PAPER_STOP_WORDS or token.magnet:
        return "stop word"
    return "colour" if token.word in COLOUR_WORDS else "other"
