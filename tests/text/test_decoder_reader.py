"""A prompt-templated decoder LLM reads expressions as its pipeline reads a prompt (tiny Qwen-Image)."""

import pytest
import torch

from refam.aggregators.magnets import PAPER_MAGNETS, AppendMagnets, RandomVectorMagnets
from refam.errors import ConfigError, ExpressionError
from refam.testing.tiny_qwenimage import build_tiny_qwenimage, qwenimage_prompt_template
from refam.text.decoder import DecoderReader, PromptTemplate

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_qwenimage()


def reader(pipe, **template) -> DecoderReader:
    text, drop = qwenimage_prompt_template()
    return DecoderReader(pipe.tokenizer, pipe.text_encoder, PromptTemplate(**{"text": text, "drop": drop, **template}), 64)


def words(tokens) -> list[str]:
    return [t.word for t in tokens if not t.special]


def test_byte_level_pieces_give_clean_words(pipe):
    (tokens,) = reader(pipe).tokenize([("the man on the left of car 2", None)])
    assert [t.piece for t in tokens][1] == "Ġman"  # the piece (and its offsets) hold the space...
    assert words(tokens) == ["the", "man", "on", "the", "left", "of", "car", "2", "2"]  # ...the word does not
    # a bare space piece belongs to the word after it, not to the magnet "_"
    assert [(t.piece, t.word) for t in tokens if t.word == "2"] == [("Ġ", "2"), ("2", "2")]


def test_paper_magnets_are_flagged_and_stop_words_found(pipe):
    strategy = AppendMagnets()
    expression = "the man on the left"
    (tokens,) = reader(pipe).tokenize([strategy.augment(expression)])
    magnets = [t for t in tokens if t.magnet]
    assert {t.word for t in magnets} == set(PAPER_MAGNETS) and "".join(t.piece for t in magnets) == "Ġ_ĠwithĠtoĠandĠpink"
    kept = [t.word for t, keep in zip(tokens, strategy.keep(tokens, expression)) if keep]
    assert kept == ["man", "left"]  # "the", "on", the magnets and the template's tokens are dropped


def test_template_tokens_are_special_and_the_system_prompt_is_dropped(pipe):
    (tokens,) = reader(pipe).tokenize([("a dog", None)])
    assert [t.piece for t in tokens] == ["a", "Ġdog", "<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
    assert [t.special for t in tokens] == [False, False] + [True] * 5
    assert all(t.word == "" and not t.magnet for t in tokens if t.special)
    # the first after the expression is its end token, as T5's EOS; the rest is the template's
    assert [t.template for t in tokens] == [False, False, False] + [True] * 4


def test_expressions_are_encoded_exactly_as_the_pipeline_encodes_a_prompt(pipe):
    text = "the red car near the tree"
    encoded = reader(pipe).encode([(text, None)], CPU, torch.float32)
    prompt_embeds, _ = pipe.encode_prompt(text, device=CPU)
    assert encoded.embeds.shape == prompt_embeds.shape
    torch.testing.assert_close(encoded.embeds, prompt_embeds, rtol=0, atol=0)


def test_k_expressions_together_get_the_embeddings_each_gets_alone(pipe):
    read = reader(pipe)
    expressions = [AppendMagnets().augment(e) for e in ("dog", "the big brown dog sitting left of the man", "a cup")]
    together = read.encode(expressions, CPU, torch.float32)
    assert together.valid.sum(dim=1).tolist() == [len(row) for row in read.tokenize(expressions)]
    for k, expression in enumerate(expressions):
        alone = read.encode([expression], CPU, torch.float32)
        n = alone.embeds.shape[1]
        assert together.valid[k, :n].all() and not together.valid[k, n:].any()
        torch.testing.assert_close(together.embeds[k, :n], alone.embeds[0], rtol=0, atol=1e-6)
        assert together.tokens[k][:n] == alone.tokens[0] and all(t.special for t in together.tokens[k][n:])


def test_vector_magnets_go_after_the_last_word_before_the_template_suffix(pipe):
    read = reader(pipe)
    magnets = RandomVectorMagnets(count=3)
    expressions = [("dog", None), ("the man on the left", None)]
    plain = read.encode(expressions, CPU, torch.float32)
    with_vectors = read.encode(expressions, CPU, torch.float32, magnets.vectors)
    for k, (text, _) in enumerate(expressions):
        tokens = with_vectors.tokens[k]
        n_words = len(read.tokenize([(text, None)])[0]) - 5
        assert [t.magnet for t in tokens[n_words : n_words + 3]] == [True] * 3
        assert [t.piece for t in tokens[n_words + 3 : n_words + 8]] == ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ"]
        assert with_vectors.valid[k].sum() == plain.valid[k].sum() + 3
        assert [t.template for t in tokens[n_words + 3 : n_words + 8]] == [False] + [True] * 4  # still the end token
        assert with_vectors.scored()[k].sum() == n_words + 3 + 1
        # causal: the words before the vectors read as without them, the suffix after them does not
        torch.testing.assert_close(with_vectors.embeds[k, :n_words], plain.embeds[k, :n_words], rtol=0, atol=1e-6)
        assert not torch.allclose(with_vectors.embeds[k, n_words + 3], plain.embeds[k, n_words], atol=1e-3)
    assert AppendMagnets().keep(with_vectors.tokens[0][: int(with_vectors.valid[0].sum())]) == [True] + [False] * 8


def test_hidden_layers_are_concatenated_over_features_in_order(pipe):
    text = "a cup"
    both = reader(pipe, hidden_layers=(1, -1)).encode([(text, None)], CPU, torch.float32).embeds
    first = reader(pipe, hidden_layers=(1,)).encode([(text, None)], CPU, torch.float32).embeds
    last = reader(pipe).encode([(text, None)], CPU, torch.float32).embeds
    torch.testing.assert_close(both, torch.cat([first, last], dim=-1), rtol=0, atol=0)


def test_validate_names_the_token_limit(pipe):
    read = reader(pipe)
    text, _ = AppendMagnets().augment("the man on the left")
    assert read.count_tokens(text) == 11  # the expression's own tokens, not the template's
    read.max_tokens = 10
    with pytest.raises(ExpressionError, match="11 tokens with magnets; the limit is 10 .*expression_max_tokens"):
        read.validate(text)
    with pytest.raises(ExpressionError, match="empty"):
        read.validate("  ")


def test_a_template_that_does_not_fit_the_tokenizer_is_a_config_error(pipe):
    with pytest.raises(ConfigError, match="prompt goes"):
        PromptTemplate("no placeholder")
    with pytest.raises(ConfigError, match="prefix is 34 tokens"):
        reader(pipe, drop=35).tokenize([("a dog", None)])
