"""Referring expressions through a prompt-templated decoder-only LLM (Qwen2.5-VL for Qwen-Image,
Mistral 3 or Qwen3 for FLUX.2, Llama for HunyuanVideo).

Such a pipeline wraps the prompt in a chat template, runs the LLM, takes one or more of its hidden
layers and drops a fixed number of leading tokens (the system prompt). `DecoderReader` encodes each
expression exactly so (same template, layers and drop), as the `PromptTemplate` a backbone gives it
says. K expressions share one batch padded on the right: a causal LLM's real tokens never attend
to later positions and their positions count from the left, so each expression gets the
embeddings it gets alone.

Words: byte-level BPE pieces carry their leading space ("Ġdog", with offsets over " dog"), so
offsets are trimmed to the word before `refam.text.tokens.tokens_to_words` names it, and a bare
space piece ("Ġ" before "_" or a digit) belongs to the word after it.

The template's tokens that the pipeline keeps (FLUX.2 dev's whole system prompt, Qwen-Image's
"<|im_end|>\\n<|im_start|>assistant\\n") are special and ride in the branch: the encoder needs them
to give the rows the pipeline's `encode_prompt` gives, and the expression's tokens attend to them in
the DiT. The first of them after the expression (Qwen's "<|im_end|>", Mistral's "[/INST]") is the
expression's end token, as T5's EOS is; the others are flagged `template`, so that the per-patch
softmax leaves them out by default (the extractor's `template_tokens`). Vector magnets are rows
inserted where appended words would go: after the expression's last token, before the end token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from refam.errors import ConfigError, ExpressionError
from refam.text.reader import EncodedExpressions, ExpressionReader, insert_rows, insert_tokens, vector_magnet_tokens
from refam.text.tokens import mark_unknown, tokens_to_words, word_spans
from refam.types import MagnetVectors, TokenInfo


@dataclass(frozen=True)
class PromptTemplate:
    """How a pipeline prepares a prompt for its decoder LLM.

    Args:
        text: the templated input with one "{}" where the prompt goes (the pipeline's
            `template.format(prompt)`, or a chat template rendered around "{}").
        drop: leading tokens of the templated input the pipeline discards (Qwen-Image 34, its
            system prompt; HunyuanVideo 95; FLUX.2 0).
        hidden_layers: the LLM hidden states the pipeline takes (0 = input embeddings, -1 = the
            last, normed), concatenated over features in this order: Qwen-Image (-1,),
            HunyuanVideo (-3,), FLUX.2 (10, 20, 30).
        add_special_tokens: whether the tokenizer adds its own BOS/EOS to the templated text, as
            the pipeline's call does (False for a rendered chat template that holds them already).
        pad_multiple: the pipeline left-pads the tokenized prompt with the pad token to a multiple of
            this many tokens and runs the LLM with no mask, so the prompt's tokens attend to the padding
            (CogView4: 16). The padding is kept (drop 0) and rides with the expression, flagged template.
        keep_first: the pipeline keeps the first token's row (SANA's BOS) before the rows from `drop` on.
        lowercase: the pipeline lowercases the prompt before the template wraps it (SANA's
            `_text_preprocessing`); the expression is read lowercased alike.
    """

    text: str
    drop: int = 0
    hidden_layers: tuple[int, ...] = (-1,)
    add_special_tokens: bool = True
    pad_multiple: int = 1
    keep_first: bool = False
    lowercase: bool = False

    def __post_init__(self) -> None:
        if self.text.count("{}") != 1:
            raise ConfigError(f"must hold exactly one '{{}}' where the prompt goes, got {self.text!r}", field="text")
        if self.drop < 0:
            raise ConfigError(f"must be a number of tokens >= 0, got {self.drop}", field="drop")
        if not self.hidden_layers:
            raise ConfigError("must name at least one hidden layer (-1: the last)", field="hidden_layers")

    @property
    def kept_first(self) -> int:
        """1 where the first token's row is kept before the rows from `drop` on, else 0."""
        return int(self.keep_first and self.drop > 0)

    def kept(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """The kept rows [K, length, ...] of [K, S, ...]: the first where kept, then those from `drop` on."""
        rows = x[:, self.drop : self.drop + length - self.kept_first]
        return torch.cat([x[:, :1], rows], dim=1) if self.kept_first else rows

    @property
    def prefix(self) -> str:
        return self.text.split("{}")[0]

    @property
    def suffix(self) -> str:
        return self.text.split("{}")[1]


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's span in `text` clipped to it and without its leading spaces (a bare space piece
    becomes the empty span where the next word starts)."""
    start, end = max(start, 0), min(end, len(text))
    while start < end and text[start].isspace():
        start += 1
    return start, max(start, end)


def _expression_words(text: str, pieces: list[str], spans: list[tuple[int, int]], special: list[bool],
                      magnet_start: int | None) -> list[TokenInfo]:
    """`tokens_to_words` on trimmed spans; an empty span (a bare space piece) takes the word after it."""
    spans = [_trimmed(text, start, end) for start, end in spans]
    words = word_spans(text)
    word_at = {start: text[start:end].lower() for start, end in words}
    infos = tokens_to_words(text, pieces, spans, special, magnet_start, words)
    return [replace(t, word=word_at.get(t.start, "")) if not t.special and t.start == t.end else t for t in infos]


@dataclass
class _Batch:
    ids: torch.Tensor  # [K, S] the templated inputs, right-padded
    mask: torch.Tensor  # [K, S]
    tokens: list[list[TokenInfo]]  # each row's tokens from `drop` on, padding excluded
    ends: list[int]  # each row's index (in the full input) just after its expression's last token


class DecoderReader(ExpressionReader):
    """A decoder-only LLM and its tokenizer, reading expressions as the pipeline reads a prompt.

    Args:
        tokenizer: the pipeline's tokenizer (a fast one: offsets are needed).
        encoder: the pipeline's text encoder (`inputs_embeds`, `attention_mask` and
            `output_hidden_states` in, `hidden_states` out), e.g. Qwen2_5_VLForConditionalGeneration.
        template: the pipeline's template, drop and hidden layers.
        max_tokens: the longest expression (with magnets) accepted, counted in its own tokens (the
            template's are not counted).
        limit_name: the extractor setting `max_tokens` comes from, named when an expression is too long.
    """

    def __init__(self, tokenizer, encoder, template: PromptTemplate, max_tokens: int,
                 limit_name: str = "expression_max_tokens") -> None:
        self.tokenizer, self.encoder, self.template = tokenizer, encoder, template
        self.max_tokens, self.limit_name = max_tokens, limit_name
        self._special_ids = set(tokenizer.all_special_ids)

    def _batch(self, expressions: list[tuple[str, int | None]]) -> _Batch:
        template = self.template
        prefix, suffix = template.prefix, template.suffix
        if template.lowercase:
            expressions = [(text.lower(), magnet_start) for text, magnet_start in expressions]
        enc = self.tokenizer(
            [prefix + text + suffix for text, _ in expressions], padding="longest", padding_side="right",
            return_offsets_mapping=True, add_special_tokens=template.add_special_tokens, return_tensors="pt",
        )
        if template.pad_multiple > 1:
            enc = self._left_padded(enc)
        tokens, ends = [], []
        for (text, magnet_start), ids, mask, offsets in zip(
            expressions, enc["input_ids"].tolist(), enc["attention_mask"].tolist(), enc["offset_mapping"].tolist()
        ):
            n, first, stop = sum(mask), len(prefix), len(prefix) + len(text)
            # the unknown token stands for the expression's own word (a special id in some tokenizers)
            inside = [s < stop and e > first and (i not in self._special_ids or i == self.tokenizer.unk_token_id)
                      for i, (s, e) in zip(ids, offsets)][:n]
            if not any(inside):
                raise ExpressionError(f"the expression {text!r} gives no tokens of its own")
            head, last = inside.index(True), n - inside[::-1].index(True)
            if head < template.drop:
                raise ConfigError(
                    f"drop is {template.drop} tokens but the template's prefix is {head} tokens with this tokenizer: "
                    "the drop would cut into the expression", field="template")
            keep = [0] * template.kept_first + list(range(template.drop, n))
            words = _expression_words(
                text, self.tokenizer.convert_ids_to_tokens([ids[i] for i in keep]),
                [(offsets[i][0] - first, offsets[i][1] - first) for i in keep], [not inside[i] for i in keep], magnet_start)
            # every templated token but the end token (the first after the expression) is the template's
            around = [not inside[i] and i != last for i in keep]
            words = mark_unknown(words, [ids[i] for i in keep], self.tokenizer.unk_token_id)
            tokens.append([replace(t, template=True) if flag else t for t, flag in zip(words, around)])
            ends.append(last)
        return _Batch(enc["input_ids"], enc["attention_mask"], tokens, ends)

    def _left_padded(self, enc) -> dict:
        """Each row's real tokens after the pad tokens that fill them up to a multiple of `pad_multiple`, all
        attended (the pipeline passes no mask), the batch right-padded again to its longest row."""
        multiple, pad = self.template.pad_multiple, self.tokenizer.pad_token_id
        rows = []
        for ids, mask, offsets in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), enc["offset_mapping"].tolist()):
            n = sum(mask)
            fill = -n % multiple
            rows.append(([pad] * fill + ids[:n], [(0, 0)] * fill + offsets[:n]))
        width = max(len(ids) for ids, _ in rows)
        return {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
                "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
                "offset_mapping": torch.tensor([offsets + [(0, 0)] * (width - len(offsets)) for _, offsets in rows])}

    def count_tokens(self, text: str) -> int:
        return sum(not t.special for t in self._batch([(text, None)]).tokens[0])

    def tokenize(self, expressions: list[tuple[str, int | None]]) -> list[list[TokenInfo]]:
        return self._batch(expressions).tokens

    @torch.inference_mode()
    def encode(self, expressions: list[tuple[str, int | None]], device: torch.device, dtype: torch.dtype,
               magnet_vectors: MagnetVectors | None = None) -> EncodedExpressions:
        batch = self._batch(expressions)
        table = self.encoder.get_input_embeddings()
        inputs, mask, tokens = table(batch.ids.to(self.encoder.device)), batch.mask.to(self.encoder.device), batch.tokens
        vectors = magnet_vectors(table.weight) if magnet_vectors is not None else None
        if vectors is not None:
            inputs, mask = insert_rows(inputs, mask, batch.ends, vectors.to(inputs))
            tokens = insert_tokens(tokens, [end - self.template.drop + self.template.kept_first for end in batch.ends],
                                   vector_magnet_tokens(vectors.shape[0]))
        out = self.encoder(inputs_embeds=inputs, attention_mask=mask, output_hidden_states=True, use_cache=False)
        length = max(len(row) for row in tokens)
        kept = self.template.kept
        hidden = torch.cat([kept(out.hidden_states[layer], length) for layer in self.template.hidden_layers], dim=-1)
        padding = TokenInfo(self.tokenizer.pad_token or "", "", special=True, magnet=False)
        return EncodedExpressions(
            embeds=hidden.to(device, dtype),
            valid=kept(mask, length).bool().cpu(),
            tokens=[row + [padding] * (length - len(row)) for row in tokens],
        )

