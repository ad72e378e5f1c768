"""Referring expressions through a T5 encoder, K at a time, as every backbone's branch reads them.

One batch tokenization (padded to the longest, with its attention mask) gives each expression the
same embeddings as when encoded alone, and fast-tokenizer offsets give each sub-word token its word
(`refam.text.tokens.tokens_to_words`). Magnets that are vectors, not words, are rows inserted into
the T5 input where appended words would go: after the last word, before EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from refam.errors import ExpressionError
from refam.types import MagnetVectors
from refam.text.tokens import tokens_to_words
from refam.types import TokenInfo

if TYPE_CHECKING:
    from refam.extractors.offload import Placement


@dataclass
class EncodedExpressions:
    embeds: torch.Tensor  # [K, L, D] T5, padded to the longest expression
    valid: torch.Tensor  # [K, L] bool
    tokens: list[list[TokenInfo]]


def insert_before_eos(
    inputs: torch.Tensor, mask: torch.Tensor, tokens: list[list[TokenInfo]], vectors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[list[TokenInfo]]]:
    """Append M vector magnets to each expression's input embeddings [K, L, D] where appended words
    would go: after its last word, before its EOS. Returns [K, L + M, D] inputs, mask and tokens."""
    k, length, dim = inputs.shape
    m = vectors.shape[0]
    out = inputs.new_zeros(k, length + m, dim)
    out_mask = mask.new_zeros(k, length + m)
    out_tokens = []
    for row in range(k):
        n = int(mask[row].sum())  # real tokens, the last being EOS
        out[row, : n - 1] = inputs[row, : n - 1]
        out[row, n - 1 : n - 1 + m] = vectors
        out[row, n - 1 + m :] = inputs[row, n - 1 :]
        out_mask[row, : n + m] = 1
        magnets = [TokenInfo(f"<vector {j}>", "", special=False, magnet=True) for j in range(m)]
        out_tokens.append(tokens[row][: n - 1] + magnets + tokens[row][n - 1 :])
    return out, out_mask, out_tokens


class ExpressionEncoder:
    """A T5 tokenizer and encoder reading K expressions (with magnets) in one batch.

    Args:
        tokenizer: a fast T5 tokenizer (offsets are needed).
        encoder: the T5 encoder the backbone conditions on.
        max_tokens: the longest expression accepted (`model.extractor.init_args.expression_max_tokens`).
    """

    def __init__(self, tokenizer, encoder, max_tokens: int) -> None:
        self.tokenizer, self.encoder, self.max_tokens = tokenizer, encoder, max_tokens

    def tokenize(self, expressions: list[tuple[str, int | None]]):
        """One batch tokenization: ids and mask, and each token's word (padding counts as special)."""
        texts = [text for text, _ in expressions]
        enc = self.tokenizer(texts, padding="longest", return_tensors="pt", return_offsets_mapping=True,
                             return_special_tokens_mask=True)
        tokens = [
            tokens_to_words(text, self.tokenizer.convert_ids_to_tokens(ids), offsets.tolist(), special.bool().tolist(), start)
            for (text, start), ids, offsets, special in zip(
                expressions, enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
            )
        ]
        return enc, tokens

    def validate(self, text: str) -> None:
        n = len(self.tokenizer(text)["input_ids"])
        if n > self.max_tokens:
            raise ExpressionError(
                f"the expression has {n} T5 tokens with magnets; the limit is {self.max_tokens} "
                "(model.extractor.init_args.expression_max_tokens): shorten it or raise the limit"
            )

    @torch.inference_mode()
    def encode(self, expressions: list[tuple[str, int | None]], device: torch.device, dtype: torch.dtype,
               magnet_vectors: MagnetVectors | None = None) -> EncodedExpressions:
        """Embeddings [K, L, D] on `device` in `dtype`, their mask and tokens; callers validate first."""
        enc, tokens = self.tokenize(expressions)
        table = self.encoder.get_input_embeddings()
        ids, mask = enc["input_ids"].to(self.encoder.device), enc["attention_mask"].to(self.encoder.device)
        inputs = table(ids)
        vectors = magnet_vectors(table.weight) if magnet_vectors is not None else None
        if vectors is not None:
            inputs, mask, tokens = insert_before_eos(inputs, mask, tokens, vectors.to(inputs))
        embeds = self.encoder(inputs_embeds=inputs, attention_mask=mask)[0].to(device, dtype)
        return EncodedExpressions(embeds=embeds, valid=mask.bool().cpu(), tokens=tokens)


class T5Expressions:
    """Extractor mixin: a backbone whose branch reads expressions with a T5 names it in
    `expression_encoder`; tokenizing, validating and encoding then work the same for all.
    List it before `Extractor` in the bases (`class MyExtractor(T5Expressions, Extractor)`)."""

    expression_max_tokens: int
    device: torch.device
    dtype: torch.dtype
    placement: Placement | None  # refam.extractors.offload: the T5 must be on its device to encode

    @property
    def expression_encoder(self) -> ExpressionEncoder:
        raise NotImplementedError

    def tokenize(self, text: str, magnet_start: int | None) -> list[TokenInfo]:
        return self.expression_encoder.tokenize([(text, magnet_start)])[1][0]

    def validate_expression(self, text: str) -> None:
        super().validate_expression(text)  # the Extractor's checks (empty text)
        self.expression_encoder.validate(text)

    def encode_expressions(
        self, expressions: list[tuple[str, int | None]], magnet_vectors: MagnetVectors | None = None
    ) -> EncodedExpressions:
        """K expressions in one T5 batch; callers validate first (the module does, per expression)."""
        placement = getattr(self, "placement", None)  # a backbone without offload settings has none
        if placement is not None:
            placement.enter("text")
        return self.expression_encoder.encode(expressions, self.device, self.dtype, magnet_vectors)
