"""What an answer cannot rest on, said in sentences a user reads: the words of an expression that
the model's tokenizer does not know (it reads each as its unknown token, so no meaning reaches the
model), and an expression left with no content word once the magnet strategy drops its stop words
and magnets. `RefAMPipeline` puts them on every prediction (`Prediction.warnings`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from refam.types import TokenInfo


def unknown_words(expression: str, tokens: Sequence[TokenInfo]) -> list[str]:
    """The words of `expression` its tokenizer read as the unknown token, as the user wrote them
    (tokens carry them lower-cased), in order, each once; appended magnets are not the user's."""
    words: list[str] = []
    for token in tokens:
        if token.unknown and not token.magnet and token.word:
            found = re.search(re.escape(token.word), expression, flags=re.IGNORECASE)
            word = found.group(0) if found else token.word
            if word not in words:
                words.append(word)
    return words


def _quoted(words: list[str]) -> str:
    return ", ".join(f'"{w}"' for w in words)


def expression_warnings(expression: str, tokens: Sequence[TokenInfo], selected: Sequence[bool]) -> list[str]:
    """The warnings of one expression: `tokens` as the extractor read it (magnets appended),
    `selected` the magnet strategy's content tokens (`MagnetStrategy.select`: none for an expression
    of stop words only)."""
    warnings = []
    unknown = unknown_words(expression, tokens)
    if unknown:
        one = len(unknown) == 1
        sentence = (f"the model does not know the word{'' if one else 's'} {_quoted(unknown)}: its tokenizer reads "
                    f"{'it as an unknown token' if one else 'them as unknown tokens'}, so {'its' if one else 'their'} "
                    "meaning does not reach the model")
        content = [t for t, keep in zip(tokens, selected) if keep]
        if content and all(t.unknown for t in content):
            sentence += "; no word it knows is left to say what to look for, so the mask is a guess"
        warnings.append(sentence)
    if not any(selected):
        warnings.append(f'every word of "{expression.strip()}" is a stop word or a magnet, which the filter drops: '
                        "nothing names what to look for, so the heatmap falls back to those words and the mask "
                        "is a guess")
    return warnings
