"""Map a DiT tokenizer's sub-word tokens to the words of the text they came from.

Filtering (stop words, magnets, noun phrases) is defined on words, the attention maps on
sub-word tokens; character offsets from a fast tokenizer connect the two.
"""

from __future__ import annotations

import re
from dataclasses import replace

from refam.types import TokenInfo

# Words are runs of letters/digits (with an inner apostrophe); every other visible character is a
# word of its own. "_" is deliberately not a letter here: it is the paper's magnet symbol.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*|\S")
WORD_START_MARKER = "▁"  # SentencePiece's word-start symbol; a bare one stands for the paper's "_"


def word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _WORD.finditer(text)]


def tokens_to_words(
    text: str,
    pieces: list[str],
    offsets: list[tuple[int, int]],
    special: list[bool],
    magnet_start: int | None,
    words: list[tuple[int, int]] | None = None,
) -> list[TokenInfo]:
    """Describe each token: its word (lower-cased), whether it is special, whether it is a magnet.

    `magnet_start` is the character index where the appended magnets begin (None: no magnets).
    `words`: `word_spans(text)`, for a caller that has them already.
    """
    spans = word_spans(text) if words is None else words
    infos = []
    for piece, (start, end), is_special in zip(pieces, offsets, special):
        if is_special:
            infos.append(TokenInfo(piece=piece, word="", special=True, magnet=False))
            continue
        if piece.strip(WORD_START_MARKER) == "" or start == end:
            word = "_"
        else:
            word = next((text[a:b] for a, b in spans if a <= start < b), text[start:end])
        magnet = magnet_start is not None and start >= magnet_start
        infos.append(TokenInfo(piece=piece, word=word.lower(), special=False, magnet=magnet, start=start, end=end))
    return infos


def mark_unknown(tokens: list[TokenInfo], ids: list[int], unknown_id: int | None) -> list[TokenInfo]:
    """`tokens` with `unknown` set where the tokenizer gave its unknown token (`ids[i] == unknown_id`):
    a word outside its vocabulary, which the model cannot read. A tokenizer without one (byte-level
    BPE spells every text) marks none."""
    if unknown_id is None:
        return list(tokens)
    return [replace(t, unknown=True) if i == unknown_id else t for t, i in zip(tokens, ids)]
