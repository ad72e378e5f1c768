"""How a backbone's text encoder reads referring expressions: the contract every reader keeps.

A reader turns K expressions (with their magnets) into the embeddings the backbone's expression
branch joins its text stream with: one batch, padded so that each expression gets exactly the
embeddings it gets alone, each token described by its word (`TokenInfo`) so that stop words,
magnets and special tokens are filtered on words whatever the tokenizer. T5-style encoders
(`refam.text.t5.T5Reader`) and prompt-templated decoder LLMs (`refam.text.decoder`) are readers.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from refam.errors import ExpressionError, require_words
from refam.types import MagnetVectors, TokenInfo


# how a prompt template's tokens (`TokenInfo.template`) take part in the per-patch softmax across
# tokens: "exclude" (the paper's softmax: the expression's own tokens, its magnets, its end token) or
# "include" (every token the branch carries)
TEMPLATE_TOKENS = ("exclude", "include")


@dataclass
class EncodedExpressions:
    embeds: torch.Tensor  # [K, L, D], padded to the longest expression
    valid: torch.Tensor  # [K, L] bool: the tokens the branch carries (False = padding)
    tokens: list[list[TokenInfo]]

    def scored(self, template_tokens: str = "exclude") -> torch.Tensor:
        """[K, L] bool: the tokens that enter the per-patch softmax: the carried ones, less the prompt
        template's unless `template_tokens` is "include" (`TEMPLATE_TOKENS`)."""
        if template_tokens == "include":
            return self.valid
        template = torch.zeros(self.valid.shape, dtype=torch.bool)
        for k, row in enumerate(self.tokens):
            for t, token in enumerate(row[: template.shape[1]]):
                template[k, t] = token.template
        return self.valid & ~template.to(self.valid.device)


class ExpressionReader(abc.ABC):
    """A tokenizer and the text encoder the backbone conditions on, reading K expressions at once.

    `max_tokens` is the longest expression (with magnets) accepted, counted in this tokenizer's tokens."""

    max_tokens: int
    limit_name: str = "expression_max_tokens"  # the setting `max_tokens` comes from, for the error

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the text takes in the encoder's input, as `max_tokens` counts them."""

    @abc.abstractmethod
    def tokenize(self, expressions: list[tuple[str, int | None]]) -> list[list[TokenInfo]]:
        """Each expression's tokens as `encode` returns them (padding excluded)."""

    @abc.abstractmethod
    def encode(self, expressions: list[tuple[str, int | None]], device: torch.device, dtype: torch.dtype,
               magnet_vectors: MagnetVectors | None = None) -> EncodedExpressions:
        """Embeddings [K, L, D] on `device` in `dtype`, their mask and tokens; callers validate first.
        `magnet_vectors`, given the input-embedding table [V, D], returns rows [M, D] inserted where
        appended words would go (after the last word, before the end-of-text tokens)."""

    def validate(self, text: str) -> None:
        """Raise `ExpressionError` for an expression (with magnets) this reader cannot encode."""
        require_words(text)
        n = self.count_tokens(text)
        if n > self.max_tokens:
            raise ExpressionError(
                f"the expression has {n} tokens with magnets; the limit is {self.max_tokens} "
                f"(the extractor's {self.limit_name}): shorten it or raise the limit"
            )


def insert_rows(inputs: torch.Tensor, mask: torch.Tensor, at: list[int], rows: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Insert the same M rows [M, D] into each sequence of inputs [K, S, D] before index at[k]
    (the rest moves right); returns [K, S + M, D] inputs and their [K, S + M] mask."""
    k, length, dim = inputs.shape
    m = rows.shape[0]
    out = inputs.new_zeros(k, length + m, dim)
    out_mask = mask.new_zeros(k, length + m)
    for row, i in enumerate(at):
        out[row, :i], out[row, i : i + m], out[row, i + m :] = inputs[row, :i], rows, inputs[row, i:]
        out_mask[row, :i], out_mask[row, i : i + m], out_mask[row, i + m :] = mask[row, :i], 1, mask[row, i:]
    return out, out_mask


def vector_magnet_tokens(m: int) -> list[TokenInfo]:
    """How M vector magnets are described among the tokens: no word, flagged as magnets (so the
    aggregator drops them as it drops magnet words)."""
    return [TokenInfo(f"<vector {j}>", "", special=False, magnet=True) for j in range(m)]


def insert_tokens(tokens: list[list[TokenInfo]], at: list[int], inserted: list[TokenInfo]) -> list[list[TokenInfo]]:
    """Each row of tokens with `inserted` before index at[k], as `insert_rows` does to the inputs."""
    return [row[:i] + inserted + row[i:] for row, i in zip(tokens, at)]
