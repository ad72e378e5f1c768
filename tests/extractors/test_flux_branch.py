"""FLUX.1's own claims about the expression branch, on a tiny FLUX. The invariants every backbone
keeps (the velocity is the stock model's, K together = alone, block-0 maps from the stock modules,
a planted cell, capture memory flat with depth) are tests/extractors/contract/, FLUX among them."""

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.base import select_blocks
from refam.extractors.flux import FluxExtractor

MAGNETS = AppendMagnets()
EXPRESSIONS = ["the red dog on the left", "a man", "the small blue car near the tree"]


def test_branch_changes_nothing_even_with_a_caption_of_padding_only(tiny_extractor):
    """An empty caption is T5 padding only (FLUX does not mask it): the branch after it still leaves
    the velocity bit for bit as it is without the branch."""
    latent = tiny_extractor.encode_image(Image.new("RGB", (96, 80), (40, 90, 160)))
    x_t = 0.25 * latent.x0 + 0.75 * torch.randn(latent.x0.shape, generator=torch.Generator().manual_seed(0))
    condition = tiny_extractor.encode_caption("")
    encoded = tiny_extractor.encode_expressions([MAGNETS.augment(e) for e in EXPRESSIONS])
    plain = tiny_extractor.forward(x_t, 0.75, latent.grid, condition)
    capture = tiny_extractor.new_capture(encoded, condition, latent.grid)
    with_branch = tiny_extractor.forward(x_t, 0.75, latent.grid, condition, encoded, capture)
    assert capture.observations == tiny_extractor.num_blocks and capture.scores.abs().sum() > 0
    assert torch.equal(with_branch, plain), f"max difference {(with_branch - plain).abs().max():.3g}"


def test_text_mass_is_a_share_of_attention(tiny_extractor):
    maps = tiny_extractor.extract(Image.new("RGB", (64, 64)), "", [MAGNETS.augment("a man")], "s")
    mass = maps.text_mass[0][maps.valid[0]]
    assert (mass > 0).all() and mass.sum() < 1.0  # the rest of each query's attention went to the image


def test_noise_is_a_function_of_seed_and_sample_id(tiny_extractor):
    image = Image.new("RGB", (64, 64), (10, 200, 10))
    a = tiny_extractor.extract(image, "", [MAGNETS.augment("a dog")], "id-1")
    b = tiny_extractor.extract(image, "", [MAGNETS.augment("a dog")], "id-1")
    c = tiny_extractor.extract(image, "", [MAGNETS.augment("a dog")], "id-2")
    assert a.scores.equal(b.scores)
    assert not a.scores.equal(c.scores)


def test_block_selection():
    assert select_blocks(10, None) == set(range(10))
    assert select_blocks(10, 0.6) == {6, 7, 8, 9}  # 60 % of the earliest blocks filtered
    assert select_blocks(10, 0.0) == set(range(10))
    assert select_blocks(10, [0, -1]) == {0, 9}
    with pytest.raises(ValueError, match="block indices"):
        select_blocks(10, [10])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        select_blocks(10, 1.0)


def test_selected_blocks_only_are_averaged(tiny_flux_dir):
    image = Image.new("RGB", (64, 64), (100, 100, 0))
    maps = {}
    for blocks in ([0], [3], [0, 3]):
        extractor = FluxExtractor(str(tiny_flux_dir), torch_dtype="float32", resolution=64, caption_max_tokens=8, blocks=blocks)
        extractor.setup(torch.device("cpu"))
        maps[tuple(blocks)] = extractor.extract(image, "", [MAGNETS.augment("a cat")], "s").scores
    assert not maps[(0,)].equal(maps[(3,)])
    torch.testing.assert_close(maps[(0, 3)], (maps[(0,)] + maps[(3,)]) / 2)


def test_key_bias_lets_an_expression_see_its_own_real_tokens_and_the_image_only():
    from refam.extractors.capture import BranchLayout

    valid = torch.tensor([[True, True, False], [True, True, True]])
    for order, caption_cols, image_cols, branch_cols in [
        (("branch", "caption", "image"), slice(6, 8), slice(8, 12), slice(0, 6)),  # FLUX
        (("image", "branch"), slice(0, 0), slice(0, 4), slice(4, 10)),  # Mochi
    ]:
        bias = BranchLayout(caption_len=2, key_valid=valid, key_order=order).key_bias(num_image_tokens=4)
        assert set(bias.unique().tolist()) == {0.0, float("-inf")}
        blocked = bias == float("-inf")
        assert blocked.shape == (6, branch_cols.stop - branch_cols.start + (caption_cols.stop - caption_cols.start) + 4)
        assert blocked[:, caption_cols].all()
        assert not blocked[:, image_cols].any()
        own = ~blocked[:, branch_cols]
        expected = torch.zeros(6, 6, dtype=torch.bool)
        expected[0:3, 0:2] = True  # expression 0: its 2 real tokens; its padding is blocked
        expected[3:6, 3:6] = True  # expression 1: its 3 tokens, never expression 0's
        assert own.equal(expected)


def test_a_folder_without_a_pipeline_is_a_checkpoint_error_naming_the_field_and_the_layout(tmp_path):
    from refam.errors import CheckpointError

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"^pretrained: .*FluxPipeline\.save_pretrained") as raised:
        FluxExtractor(str(tmp_path / "empty"), local_files_only=True).setup(torch.device("cpu"))
    assert raised.value.field == "pretrained" and "\n" not in str(raised.value)
