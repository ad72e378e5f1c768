"""Referring expressions through an encoder-only text model (T5, UMT5, CLIP's text tower).

One batch tokenization (padded to the longest, with its attention mask) gives each expression the
same embeddings as when encoded alone (the encoder masks the padding), and fast-tokenizer offsets
give each sub-word token its word (`refam.text.tokens.tokens_to_words`). Magnets that are vectors,
not words, are rows inserted into the input embeddings where appended words would go: after the
last word, before EOS.
"""

from __future__ import annotations

import torch

from refam.text.reader import EncodedExpressions, ExpressionReader, insert_rows, insert_tokens, vector_magnet_tokens
from refam.text.tokens import mark_unknown, tokens_to_words
from refam.types import MagnetVectors, TokenInfo


class T5Reader(ExpressionReader):
    """An encoder-only text model and its fast tokenizer (offsets are needed), e.g. FLUX's T5.

    Args:
        tokenizer: the backbone's fast tokenizer.
        encoder: the text encoder the backbone conditions on (`inputs_embeds` and `attention_mask`
            in, last hidden state out).
        max_tokens: the longest expression accepted.
    """

    def __init__(self, tokenizer, encoder, max_tokens: int) -> None:
        self.tokenizer, self.encoder, self.max_tokens = tokenizer, encoder, max_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def tokenize_batch(self, expressions: list[tuple[str, int | None]]):
        """One batch tokenization: ids and mask (padded to the longest), each token's word."""
        texts = [text for text, _ in expressions]
        enc = self.tokenizer(texts, padding="longest", padding_side="right", return_tensors="pt",
                             return_offsets_mapping=True, return_special_tokens_mask=True)
        tokens = [
            mark_unknown(tokens_to_words(text, self.tokenizer.convert_ids_to_tokens(ids), offsets.tolist(),
                                         special.bool().tolist(), start), ids.tolist(), self.tokenizer.unk_token_id)
            for (text, start), ids, offsets, special in zip(
                expressions, enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
            )
        ]
        return enc, tokens

    def tokenize(self, expressions: list[tuple[str, int | None]]) -> list[list[TokenInfo]]:
        enc, tokens = self.tokenize_batch(expressions)
        return [row[: int(n)] for row, n in zip(tokens, enc["attention_mask"].sum(dim=1))]

    @torch.inference_mode()
    def encode(self, expressions: list[tuple[str, int | None]], device: torch.device, dtype: torch.dtype,
               magnet_vectors: MagnetVectors | None = None) -> EncodedExpressions:
        enc, tokens = self.tokenize_batch(expressions)
        table = self.encoder.get_input_embeddings()
        ids, mask = enc["input_ids"].to(self.encoder.device), enc["attention_mask"].to(self.encoder.device)
        inputs = table(ids)
        vectors = magnet_vectors(table.weight) if magnet_vectors is not None else None
        if vectors is not None:
            at = [int(n) - 1 for n in mask.sum(dim=1)]  # each row's EOS: the last real token, padding on the right
            inputs, mask = insert_rows(inputs, mask, at, vectors.to(inputs))
            tokens = insert_tokens(tokens, at, vector_magnet_tokens(vectors.shape[0]))
        embeds = self.encoder(inputs_embeds=inputs, attention_mask=mask)[0].to(device, dtype)
        return EncodedExpressions(embeds=embeds, valid=mask.bool().cpu(), tokens=tokens)
