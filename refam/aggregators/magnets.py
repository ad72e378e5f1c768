"""Attention magnets: tokens appended to the expression that absorb surplus attention.

A `MagnetStrategy` decides (1) what text the expression branch encodes and (2) which of its tokens
are kept after the per-patch softmax across tokens. Dropped: special tokens (EOS, padding), the
appended magnets, and (optionally) the expression's own stop words.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Sequence

import torch

from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.config import Configurable
from refam.errors import ConfigError
from refam.text.parsing import ExpressionParser
from refam.types import TokenInfo

PAPER_MAGNETS = ("_", "with", "to", "and", "pink")


class MagnetStrategy(Configurable, abc.ABC):
    """Turns an expression into the text the branch encodes, and selects the tokens to keep."""

    @abc.abstractmethod
    def augment(self, expression: str) -> tuple[str, int | None]:
        """Return (text to encode, character index where magnets start or None)."""

    @abc.abstractmethod
    def select(self, tokens: Sequence[TokenInfo], expression: str = "") -> list[bool]:
        """The expression's content tokens, the ones the filter keeps; none at all for an expression
        of stop words only. `expression` is the text before `augment`, for strategies that parse it
        (token character spans refer to it: augment only appends)."""

    def keep(self, tokens: Sequence[TokenInfo], expression: str = "") -> list[bool]:
        """Which tokens' maps enter the average: `select`'s, or, where it keeps none, every token of
        the expression's own (not a magnet, not special)."""
        keep = self.select(tokens, expression)
        if not any(keep):
            # An expression made only of stop words ("it", "that one") still has to point somewhere:
            # fall back to its own (non-magnet) tokens rather than to nothing.
            keep = [not (t.special or t.magnet) for t in tokens]
        return keep

    def vectors(self, embedding_table: torch.Tensor) -> torch.Tensor | None:
        """Magnets that are not words: [M, D] rows the extractor appends to each expression's input
        embeddings (before EOS), given the text encoder's token-embedding table [V, D]. None: no rows."""
        return None


class AppendMagnets(MagnetStrategy):
    """The paper's strategy: append `magnets` (default `_ with to and pink`), drop stop words.

    Args:
        magnets: words appended after the expression; an empty list disables magnets.
        filter_stop_words: drop tokens whose word is in `stop_words` (the paper does).
        stop_words: defaults to the paper's list (NLTK English + "_", ";", ".", "-").
        noun_phrase: a parser (`refam.text.parsing.ExpressionParser`) to keep only the tokens of the
            expression's head noun phrase, as HybridGL does (the paper's NP filtering); None keeps all.
    """

    def __init__(
        self,
        magnets: Sequence[str] = PAPER_MAGNETS,
        filter_stop_words: bool = True,
        stop_words: Sequence[str] | None = None,
        noun_phrase: ExpressionParser | None = None,
    ) -> None:
        self.magnets = list(magnets)
        self.filter_stop_words = filter_stop_words
        self.stop_words = frozenset(w.lower() for w in stop_words) if stop_words is not None else PAPER_STOP_WORDS
        self.noun_phrase = noun_phrase

    def augment(self, expression: str) -> tuple[str, int | None]:
        expression = expression.strip()
        if not self.magnets:
            return expression, None
        return f"{expression} {' '.join(self.magnets)}", len(expression) + 1

    def select(self, tokens: Sequence[TokenInfo], expression: str = "") -> list[bool]:
        keep = [not (t.special or t.magnet or (self.filter_stop_words and t.word in self.stop_words)) for t in tokens]
        if self.noun_phrase is not None and expression.strip():
            span = self.noun_phrase.head_noun_phrase(expression.strip())
            if span is not None:
                in_phrase = [k and span[0] <= t.start < span[1] for k, t in zip(keep, tokens)]
                keep = in_phrase if any(in_phrase) else keep  # a phrase of stop words only keeps the rest
        return keep


PAPER_STOP_WORD_MAGNETS = ("_", "with", "to", "and")  # Table 5's "stop words" row: the default without the colour


class DrawnMagnets(AppendMagnets):
    """Magnets drawn by a seed (Table 5's random rows): `count` of them, the draw depending on
    `seed` alone; a subclass says what is drawn (`drawn_words`: the words appended, if any).

    Args:
        count: how many magnets (4, as many as the paper's stop-word magnets).
        seed: which draw.
        filter_stop_words, stop_words, noun_phrase: as for `AppendMagnets`.
    """

    def __init__(
        self,
        count: int = 4,
        seed: int = 0,
        filter_stop_words: bool = True,
        stop_words: Sequence[str] | None = None,
        noun_phrase: ExpressionParser | None = None,
    ) -> None:
        self.count, self.seed = count, seed
        super().__init__(self.drawn_words(stop_words), filter_stop_words, stop_words, noun_phrase)

    @abc.abstractmethod
    def drawn_words(self, stop_words: Sequence[str] | None) -> list[str]:
        """The words appended (checking `count`)."""


class RandomStopWordMagnets(DrawnMagnets):
    """Table 5's "random stop words" row: `count` words drawn (seeded) from the stop-word list
    instead of the paper's fixed magnets; run it with seeds 0..4 for the paper's five sets.

    Args:
        count: how many stop words to append (4, as many as the paper's stop-word magnets).
        seed: which set; the draw depends on nothing else.
        filter_stop_words, stop_words, noun_phrase: as for `AppendMagnets`.
    """

    def drawn_words(self, stop_words: Sequence[str] | None) -> list[str]:
        pool = sorted(frozenset(w.lower() for w in stop_words) if stop_words is not None else PAPER_STOP_WORDS)
        words = [w for w in pool if w.isalpha()]  # punctuation would merge into the expression's last word
        if not 0 < self.count <= len(words):
            raise ConfigError(f"must be between 1 and {len(words)}, got {self.count}", field="count")
        return random.Random(self.seed).sample(words, self.count)


class RandomVectorMagnets(DrawnMagnets):
    """Table 5's "random vectors" row: `count` random rows appended to the text encoder's input
    embeddings instead of magnet words, "re-normalised to match token distributions": each row is
    drawn per dimension from the embedding table's mean and standard deviation, then scaled to the
    table's mean row norm. Run it with seeds 0..4 for the paper's five draws.

    Args:
        count: how many vectors (4, as many as the paper's stop-word magnets).
        seed: which draw; the vectors depend on nothing else but the embedding table.
        filter_stop_words, stop_words, noun_phrase: as for `AppendMagnets` (the expression's own
            stop words are still dropped; the vectors are magnets and always dropped).
    """

    def drawn_words(self, stop_words: Sequence[str] | None) -> list[str]:
        if self.count < 1:
            raise ConfigError(f"must be at least 1, got {self.count}", field="count")
        return []

    def vectors(self, embedding_table: torch.Tensor) -> torch.Tensor:
        table = embedding_table.detach().float()
        generator = torch.Generator().manual_seed(self.seed)
        draw = torch.randn(self.count, table.shape[1], generator=generator).to(table.device)
        rows = table.mean(dim=0) + table.std(dim=0) * draw
        target_norm = table.norm(dim=1).mean()
        return rows * (target_norm / rows.norm(dim=1, keepdim=True))
