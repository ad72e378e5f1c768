"""Magnets and stop words are dropped after the softmax; content tokens are kept."""

import torch

from refam.aggregators.magnets import PAPER_MAGNETS, AppendMagnets
from refam.aggregators.stopwords import PAPER_STOP_WORDS
from refam.text.tokens import tokens_to_words


def _t5_like(text):
    """A hand-written T5-style tokenization of `text` (pieces, offsets) as a fast tokenizer gives it."""
    pieces, offsets, position = [], [], 0
    for word in text.split(" "):
        start = text.index(word, position)
        if word == "_":
            pieces += ["▁", "_"]
            offsets += [(start, start + 1), (start, start + 1)]
        elif word.endswith("."):
            pieces += ["▁" + word[:-1], "."]
            offsets += [(start, start + len(word) - 1), (start + len(word) - 1, start + len(word))]
        else:
            pieces.append("▁" + word)
            offsets.append((start, start + len(word)))
        position = start + len(word)
    return pieces + ["</s>"], offsets + [(0, 0)]


def test_paper_magnets_and_stop_words():
    assert PAPER_MAGNETS == ("_", "with", "to", "and", "pink")
    assert len(PAPER_STOP_WORDS - {"_", ";", ".", "-"}) == 127  # NLTK's list as printed in appendix B
    assert {"the", "of", "on", "with", "_", ";", "."} <= PAPER_STOP_WORDS
    assert not {"left", "right", "red", "pink", "dog"} & PAPER_STOP_WORDS


def test_magnets_stop_words_and_eos_dropped_content_kept():
    strategy = AppendMagnets()
    text, start = strategy.augment("the red car next to a tree.")
    assert text == "the red car next to a tree. _ with to and pink"
    pieces, offsets = _t5_like(text)
    tokens = tokens_to_words(text, pieces, offsets, [p == "</s>" for p in pieces], start)
    kept = [t.piece for t, keep in zip(tokens, strategy.keep(tokens)) if keep]
    assert kept == ["▁red", "▁car", "▁next", "▁tree"]
    magnets = [t.piece for t in tokens if t.magnet]
    assert magnets == ["▁", "_", "▁with", "▁to", "▁and", "▁pink"]
    # "to" inside the expression is a stop word, not a magnet
    assert [t.magnet for t in tokens if t.piece == "▁to"] == [False, True]
    assert [t.word for t in tokens[-7:-5]] == ["_", "_"]  # bare word-start marker and "_" are the paper's "_"


def test_no_magnets_and_no_stop_word_filter():
    strategy = AppendMagnets(magnets=[], filter_stop_words=False)
    text, start = strategy.augment("  the dog  ")
    assert (text, start) == ("the dog", None)
    pieces, offsets = _t5_like(text)
    tokens = tokens_to_words(text, pieces, offsets, [p == "</s>" for p in pieces], start)
    assert strategy.keep(tokens) == [True, True, False]  # only EOS dropped


def test_expression_of_only_stop_words_keeps_its_own_tokens():
    strategy = AppendMagnets()
    text, start = strategy.augment("that one there")
    pieces, offsets = _t5_like(text)
    tokens = tokens_to_words(text, pieces, offsets, [p == "</s>" for p in pieces], start)
    kept = [t.piece for t, keep in zip(tokens, strategy.keep(tokens)) if keep]
    assert kept == ["▁one"]
    text, start = strategy.augment("this is it")
    pieces, offsets = _t5_like(text)
    tokens = tokens_to_words(text, pieces, offsets, [p == "</s>" for p in pieces], start)
    assert [t.piece for t, keep in zip(tokens, strategy.keep(tokens)) if keep] == ["▁this", "▁is", "▁it"]


def test_sub_word_pieces_take_their_word():
    text = "the leftmost giraffe"
    pieces = ["▁the", "▁left", "most", "▁gir", "affe", "</s>"]
    offsets = [(0, 3), (4, 8), (8, 12), (13, 16), (16, 20), (0, 0)]
    tokens = tokens_to_words(text, pieces, offsets, [False] * 5 + [True], None)
    assert [t.word for t in tokens] == ["the", "leftmost", "leftmost", "giraffe", "giraffe", ""]
    assert AppendMagnets().keep(tokens) == [False, True, True, True, True, False]


def test_real_tokenizer_agrees(tiny_extractor):
    strategy = AppendMagnets()
    text, start = strategy.augment("the red dog on the left")
    tokens = tiny_extractor.tokenize(text, start)
    kept = [t.piece for t, keep in zip(tokens, strategy.keep(tokens)) if keep]
    assert kept == ["▁red", "▁dog", "▁left"]
    assert tokens[-1].special and tokens[-1].piece == "</s>"


def _tokens(strategy, expression):
    text, start = strategy.augment(expression)
    pieces, offsets = _t5_like(text)
    return tokens_to_words(text, pieces, offsets, [p == "</s>" for p in pieces], start)


def test_noun_phrase_filter_keeps_exactly_the_head_phrase():
    from refam.text.parsing import ExpressionParser

    strategy = AppendMagnets(noun_phrase=ExpressionParser())
    tokens = _tokens(strategy, "the red car next to a tree")
    kept = [t.piece for t, keep in zip(tokens, strategy.keep(tokens, "the red car next to a tree")) if keep]
    assert kept == ["▁red", "▁car"]
    # without the expression text there is nothing to parse: stop words and magnets only
    assert [t.piece for t, keep in zip(tokens, strategy.keep(tokens)) if keep] == ["▁red", "▁car", "▁next", "▁tree"]
    tokens = _tokens(strategy, "man on the left holding a cup")
    assert [t.piece for t, k in zip(tokens, strategy.keep(tokens, "man on the left holding a cup")) if k] == ["▁man"]


def test_random_stop_word_sets_are_seeded_stop_words_and_dropped():
    import pytest

    from refam.aggregators.magnets import RandomStopWordMagnets
    from refam.errors import ConfigError

    sets = [RandomStopWordMagnets(seed=seed).magnets for seed in range(5)]
    assert sets == [RandomStopWordMagnets(seed=seed).magnets for seed in range(5)]  # the seed alone decides
    assert len({tuple(s) for s in sets}) == 5
    assert all(len(s) == 4 and set(s) <= PAPER_STOP_WORDS and all(w.isalpha() for w in s) for s in sets)
    strategy = RandomStopWordMagnets(seed=3)
    tokens = _tokens(strategy, "the big dog")
    kept = [t.piece for t, keep in zip(tokens, strategy.keep(tokens, "the big dog")) if keep]
    assert kept == ["▁big", "▁dog"]
    assert [t.word for t in tokens if t.magnet] == strategy.magnets
    with pytest.raises(ConfigError, match="^count: must be between"):
        RandomStopWordMagnets(count=0)


def test_random_vector_magnets_have_the_token_embedding_norm_and_are_seeded():
    from refam.aggregators.magnets import RandomVectorMagnets

    table = torch.randn(500, 48, generator=torch.Generator().manual_seed(1)) * 3.0 + 0.5
    vectors = RandomVectorMagnets(count=4, seed=0).vectors(table)
    assert vectors.shape == (4, 48)
    torch.testing.assert_close(vectors.norm(dim=1), table.norm(dim=1).mean().expand(4))
    # drawn from the table's per-dimension statistics: over many draws its mean and spread show through
    many = RandomVectorMagnets(count=4000, seed=0).vectors(table)
    scale = table.norm(dim=1).mean() / (table.mean(0).square().sum() + table.var(0).sum()).sqrt()
    torch.testing.assert_close(many.mean(0), table.mean(0) * scale, atol=0.15, rtol=0)
    torch.testing.assert_close(many.std(0), table.std(0) * scale, atol=0.15, rtol=0.05)
    torch.testing.assert_close(RandomVectorMagnets(seed=0).vectors(table), vectors)
    assert not torch.allclose(RandomVectorMagnets(seed=1).vectors(table), vectors)
    # the text is left alone: the magnets are rows, not words
    assert RandomVectorMagnets().augment(" the red car ") == ("the red car", None)


def test_random_vector_magnets_ride_in_the_branch_before_eos_and_are_dropped(tiny_extractor):
    from refam.aggregators.magnets import RandomVectorMagnets
    from refam.aggregators.base import SoftmaxMeanAggregator
    from PIL import Image

    strategy = RandomVectorMagnets(count=3, seed=2)
    texts = [strategy.augment("the red dog"), strategy.augment("a man on the left")]
    plain = tiny_extractor.encode_expressions(texts)
    encoded = tiny_extractor.encode_expressions(texts, strategy.vectors)
    for k in range(2):
        pieces = [t.piece for t, v in zip(encoded.tokens[k], encoded.valid[k].tolist()) if v]
        words = [t.piece for t, v in zip(plain.tokens[k], plain.valid[k].tolist()) if v]
        assert pieces == words[:-1] + ["<vector 0>", "<vector 1>", "<vector 2>"] + words[-1:]
        assert int(encoded.valid[k].sum()) == int(plain.valid[k].sum()) + 3
    # the vectors change the contextual embeddings of the words (they are attended to)
    assert not torch.allclose(encoded.embeds[0, :3], plain.embeds[0, :3])
    maps = tiny_extractor.extract(Image.new("RGB", (64, 64)), "", texts, "s", magnet_vectors=strategy.vectors)
    keep = torch.tensor([strategy.keep(tokens, text) for tokens, (text, _) in zip(maps.tokens, texts)])
    kept = SoftmaxMeanAggregator()(maps, keep).kept
    for k in range(2):
        assert not any(kept[k, t] for t, token in enumerate(maps.tokens[k]) if token.magnet)
        assert kept[k].any()
