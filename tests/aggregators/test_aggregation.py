"""Softmax across tokens per patch, filtering, GAS detection."""

import pytest
import torch

from refam.aggregators.base import SoftmaxMeanAggregator, normalise
from refam.aggregators.gas import detect_sinks, sink_category
from refam.types import TokenInfo, TokenMaps


def _maps(scores, valid=None, text_mass=None, kind="logits"):
    k, t = scores.shape[:2]
    valid = torch.ones(k, t, dtype=torch.bool) if valid is None else valid
    text_mass = torch.full((k, t), 1.0 / t) if text_mass is None else text_mass
    tokens = [[TokenInfo(f"t{i}", f"w{i}", False, False) for i in range(t)] for _ in range(k)]
    return TokenMaps(scores=scores, valid=valid, text_mass=text_mass, tokens=tokens, kind=kind)


def test_softmax_is_across_tokens_per_patch_not_across_patches():
    # Token 0 (kept) has uniformly huge logits except a dip; token 1 (dropped, a magnet) is the
    # background absorber. Per-patch softmax across tokens makes token 0 win where token 1 is weak;
    # a softmax over patches would instead peak at token 0's own (uninformative) raw maximum.
    scores = torch.zeros(1, 2, 3, 4)
    scores[0, 0] = 10.0
    scores[0, 0, 0, 0] = 10.5  # raw maximum of the kept token
    scores[0, 1] = 12.0  # magnet absorbs every patch ...
    scores[0, 1, 2, 1] = 0.0  # ... except this one
    result = SoftmaxMeanAggregator()(_maps(scores), keep=torch.tensor([[True, False]]))
    assert result.heatmaps[0].argmax().item() == 2 * 4 + 1
    torch.testing.assert_close(result.probabilities.sum(dim=1), torch.ones(1, 3, 4))


def test_padding_takes_no_probability_and_filtered_tokens_are_not_averaged():
    scores = torch.randn(2, 3, 2, 2)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    result = SoftmaxMeanAggregator()(_maps(scores, valid), keep=torch.tensor([[True, False, True], [False, True, True]]))
    assert result.probabilities[1, 2].abs().sum() == 0
    assert result.kept.tolist() == [[True, False, True], [False, True, False]]
    expected0 = normalise(((scores[0].softmax(0)[0] + scores[0].softmax(0)[2]) / 2)[None])[0]
    torch.testing.assert_close(result.heatmaps[0], expected0)
    expected1 = normalise(scores[1, :2].softmax(0)[1][None])[0]
    torch.testing.assert_close(result.heatmaps[1], expected1)


def test_probs_kind_is_averaged_without_a_second_softmax():
    probs = torch.rand(1, 3, 2, 2)
    result = SoftmaxMeanAggregator()(_maps(probs, kind="probs"), keep=torch.tensor([[True, True, False]]))
    torch.testing.assert_close(result.heatmaps[0], normalise(((probs[0, 0] + probs[0, 1]) / 2)[None])[0])


def test_planted_sink_is_found():
    mass = torch.full((2, 16), 0.02)
    mass[0, 3] = 0.9  # the mean is 0.075: 12x
    mass[1, 5] = 0.15  # the mean is 0.028: 5.3x, a sink only at factor 4
    valid = torch.ones(2, 16, dtype=torch.bool)
    sinks = detect_sinks(mass, valid, factor=10.0)
    assert sinks.nonzero().tolist() == [[0, 3]]
    assert detect_sinks(mass, valid, factor=4.0).nonzero().tolist() == [[0, 3], [1, 5]]


def test_padding_never_dilutes_the_sink_mean():
    mass = torch.tensor([[0.3, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True] + [False] * 5])
    # over the 3 real tokens the mean is 0.233: nothing is 2x it; over all 8 it would be 0.0875
    assert not detect_sinks(mass, valid, factor=2.0).any()
    assert detect_sinks(mass, torch.ones_like(valid), factor=2.0)[0, :3].all()


def test_suppressing_sinks_drops_them_from_the_average():
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 0, 0, 0] = 5.0
    scores[0, 1, 1, 1] = 5.0
    mass = torch.tensor([[0.9, 0.01, 0.01]])
    keep = torch.tensor([[True, True, False]])
    detect_only = SoftmaxMeanAggregator()(_maps(scores, text_mass=mass), keep)
    suppressed = SoftmaxMeanAggregator(gas_factor=2.0, gas="drop")(_maps(scores, text_mass=mass), keep)
    assert suppressed.sinks[0].tolist() == [True, False, False]
    assert suppressed.kept[0].tolist() == [False, True, False]
    assert suppressed.heatmaps[0].argmax().item() == 3
    assert detect_only.kept[0].tolist() == [True, True, False]


def _magnet_maps(scores, mass, magnets):
    maps = _maps(scores, text_mass=mass)
    for k, row in enumerate(maps.tokens):
        for t in magnets:
            row[t] = TokenInfo(f"m{t}", "with", False, True)
    return maps


def test_redirect_hands_a_colour_sinks_surplus_to_the_magnets_and_restores_its_specificity():
    # "red car": token 0 "red" is a sink, a uniform lift of +6 over its real pattern; token 1 "car";
    # token 2 a magnet that takes the background. The red car is at (1, 2): red +1, car +2.5. A red
    # wall is at (2, 0): red +1.5, no car.
    scores = torch.zeros(1, 3, 3, 3)
    scores[0, 0] = 6.0
    scores[0, 0, 1, 2] += 1.0
    scores[0, 0, 2, 0] += 1.5
    scores[0, 1, 1, 2] = 2.5
    scores[0, 2] = 1.0
    mass = torch.tensor([[0.9, 0.01, 0.01]])
    keep = torch.tensor([[True, True, False]])
    reported = SoftmaxMeanAggregator(gas_factor=2.0)(_magnet_maps(scores, mass, [2]), keep)
    redirected = SoftmaxMeanAggregator(gas_factor=2.0, gas="redirect")(_magnet_maps(scores, mass, [2]), keep)
    assert redirected.sinks[0].tolist() == [True, False, False]
    assert redirected.kept[0].tolist() == [True, True, False]  # the sink keeps its map
    # with the lift, "red" alone decides and the red wall wins; "car" is squeezed out everywhere
    assert divmod(int(reported.heatmaps[0].argmax()), 3) == (2, 0)
    # after redirect "car" takes mass back and the red car wins
    assert divmod(int(redirected.heatmaps[0].argmax()), 3) == (1, 2)
    assert redirected.probabilities[0, 1].sum() > 10 * reported.probabilities[0, 1].sum()
    # the surplus went to the magnet too, and "red" keeps its own pattern (peak on the red wall)
    assert redirected.probabilities[0, 2].sum() > 10 * reported.probabilities[0, 2].sum()
    red = redirected.probabilities[0, 0]
    assert red[2, 0] == red.max() and red.max() - red.min() > 0.3


def test_redirect_leaves_expressions_without_sinks_unchanged_and_needs_logits():
    scores = torch.randn(2, 4, 3, 3)
    keep = torch.ones(2, 4, dtype=torch.bool)
    plain = SoftmaxMeanAggregator()(_magnet_maps(scores, None, [3]), keep)
    redirected = SoftmaxMeanAggregator(gas="redirect")(_magnet_maps(scores, None, [3]), keep)
    assert not redirected.sinks.any()
    torch.testing.assert_close(redirected.heatmaps, plain.heatmaps)
    from refam.errors import ConfigError

    with pytest.raises(ConfigError, match="softmax_stage"):
        SoftmaxMeanAggregator(gas="redirect")(_maps(scores.softmax(1), kind="probs"), keep)
    with pytest.raises(ConfigError, match="^gas: must be one of"):
        SoftmaxMeanAggregator(gas="suppress")


def test_sink_categories():
    assert sink_category(TokenInfo("▁a", "a", False, False)) == "stop word"
    assert sink_category(TokenInfo("</s>", "", True, False)) == "stop word"
    assert sink_category(TokenInfo("▁red", "red", False, False)) == "colour"
    assert sink_category(TokenInfo("▁dog", "dog", False, False)) == "other"


def test_video_maps_aggregate_frame_by_frame_with_one_normalisation_per_expression():
    """[K, T, F, h, w] maps: each frame's patches get the softmax across tokens, as a stack of images."""
    scores = torch.randn(2, 4, 3, 5, 6)
    keep = torch.tensor([[True, False, True, True], [True, True, False, False]])
    video = SoftmaxMeanAggregator()(_maps(scores), keep)
    assert video.heatmaps.shape == (2, 3, 5, 6) and video.probabilities.shape == (2, 4, 3, 5, 6)
    for f in range(3):
        frame = SoftmaxMeanAggregator()(_maps(scores[:, :, f]), keep)
        torch.testing.assert_close(video.probabilities[:, :, f], frame.probabilities)
    flat = video.heatmaps.flatten(1)
    assert flat.min(1).values.eq(0).all() and flat.max(1).values.eq(1).all()  # one min-max over all frames
    redirected = SoftmaxMeanAggregator(gas="redirect")(_maps(scores), keep)  # runs on video maps too
    assert redirected.heatmaps.shape == (2, 3, 5, 6)
