"""Tokenizers over a small known vocabulary, in the real T5 and CLIP classes: what the embedded
refam-shapes model reads (refam/embedded/refam-shapes/tokenizer*) and what the tiny test models use."""

from __future__ import annotations

import string


def word_level_tokenizers(words: list[str], clip_max_length: int = 77):
    """(CLIP, T5): a word-level T5 tokenizer over `words` and a character-level CLIP tokenizer;
    symbols stay single pieces, so "_" becomes a bare "▁" then "_" as in T5."""
    from transformers import CLIPTokenizer, T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -5.0)]
    pieces += [(p, -5.0) for p in "_;.,-'!?"]
    pieces += [("▁" + w, -1.0) for w in words]
    t5 = T5Tokenizer(vocab=pieces, extra_ids=0)

    symbols = list(string.ascii_lowercase + string.digits + "_;.,-'!?")
    clip_vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        clip_vocab.setdefault(s, len(clip_vocab))
        clip_vocab.setdefault(s + "</w>", len(clip_vocab))
    clip = CLIPTokenizer(vocab=clip_vocab, merges=[], model_max_length=clip_max_length)
    return clip, t5
