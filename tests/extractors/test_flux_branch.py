"""The expression branch's invariants (DESIGN.md, "The expression branch"), on a tiny FLUX."""

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.base import select_blocks
from refam.extractors.flux import FluxExtractor
from refam.extractors.trajectory import Trajectory
from refam.testing.tiny_flux import save_tiny_flux

MAGNETS = AppendMagnets()
EXPRESSIONS = ["the red dog on the left", "a man", "the small blue car near the tree"]


def _inputs(extractor, expressions=EXPRESSIONS, caption="a dog and a man"):
    image = Image.new("RGB", (96, 80), (40, 90, 160))
    x0, rows, cols = extractor.encode_image(image)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = 0.25 * x0 + 0.75 * noise
    encoded = extractor.encode_expressions([MAGNETS.augment(e) for e in expressions])
    return x_t, (rows, cols), extractor.encode_caption(caption), encoded


def test_branch_is_invisible_to_the_denoising_stream(tiny_extractor):
    x_t, grid, condition, encoded = _inputs(tiny_extractor)
    plain = tiny_extractor.forward(x_t, 0.75, grid, condition)
    capture = tiny_extractor.new_capture(encoded, condition.embeds.shape[1], grid)
    with_branch = tiny_extractor.forward(x_t, 0.75, grid, condition, encoded, capture)
    assert capture.observations == tiny_extractor.num_blocks
    assert capture.scores.abs().sum() > 0
    torch.testing.assert_close(with_branch, plain, rtol=1e-5, atol=1e-6)


def test_branch_changes_nothing_even_with_a_caption_of_padding_only(tiny_extractor):
    x_t, grid, condition, encoded = _inputs(tiny_extractor, caption="")
    plain = tiny_extractor.forward(x_t, 0.75, grid, condition)
    capture = tiny_extractor.new_capture(encoded, condition.embeds.shape[1], grid)
    torch.testing.assert_close(tiny_extractor.forward(x_t, 0.75, grid, condition, encoded, capture), plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("representation", ["cross_attention", "attention_output"])
@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_k_expressions_in_one_forward_equal_k_separate_forwards(tiny_flux_dir, softmax_stage, representation):
    extractor = FluxExtractor(str(tiny_flux_dir), torch_dtype="float32", resolution=128, caption_max_tokens=16,
                              softmax_stage=softmax_stage, representation=representation)
    extractor.setup(torch.device("cpu"))
    image = Image.new("RGB", (96, 80), (200, 30, 30))
    together = extractor.extract(image, "a scene", [MAGNETS.augment(e) for e in EXPRESSIONS], "sample-1")
    assert together.kind == ("logits" if softmax_stage == "after_mean" else "probs")
    for k, expression in enumerate(EXPRESSIONS):
        alone = extractor.extract(image, "a scene", [MAGNETS.augment(expression)], "sample-1")
        length = alone.valid.shape[1]
        assert together.valid[k, :length].equal(alone.valid[0])
        assert not together.valid[k, length:].any()
        torch.testing.assert_close(together.scores[k, :length], alone.scores[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together.text_mass[k, :length], alone.text_mass[0], rtol=1e-4, atol=1e-6)
        assert [t.piece for t in together.tokens[k][:length]] == [t.piece for t in alone.tokens[0]]


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


class _CleanLatent(Trajectory):
    """Observe the clean latent itself: keeps a planted pattern free of noise."""

    def states(self, x0, generator, context):
        yield x0, 0.75


class _NoRope(torch.nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, ids):
        n = ids.shape[0]
        return torch.ones(n, self.head_dim), torch.zeros(n, self.head_dim)


def test_planted_latent_cell_lands_at_its_row_and_column(tiny_flux_dir, monkeypatch):
    """A latent that is uniform except for one 2x2 cell: with RoPE switched off every other image
    token stays identical through all blocks (permutation symmetry), so exactly one cell of each
    token map differs, and it must be the planted (row, column) of a non-square grid."""
    extractor = FluxExtractor(
        str(tiny_flux_dir), torch_dtype="float32", resolution=128, keep_aspect=True,
        caption_max_tokens=16, trajectory=_CleanLatent(),
    )
    extractor.setup(torch.device("cpu"))
    transformer = extractor.pipe.transformer
    monkeypatch.setattr(transformer, "pos_embed", _NoRope(transformer.config.attention_head_dim))
    image = Image.new("RGB", (200, 100))
    height, width = extractor.image_size(*image.size)
    rows, cols = height // 16, width // 16
    assert rows != cols
    planted_row, planted_col = 1, cols - 3
    latent = torch.zeros(1, 16, 2 * rows, 2 * cols)
    latent[:, :, 2 * planted_row : 2 * planted_row + 2, 2 * planted_col : 2 * planted_col + 2] = 3.0

    class _Encoded:
        latent_dist = type("D", (), {"mode": staticmethod(lambda: latent)})

    monkeypatch.setattr(extractor.pipe.vae, "encode", lambda pixels: _Encoded)
    maps = extractor.extract(image, "", [MAGNETS.augment("the red dog")], "planted")
    assert maps.scores.shape[-2:] == (rows, cols)
    for t in range(int(maps.valid[0].sum())):
        grid = maps.scores[0, t]
        background = grid[0, 0]
        differs = ~torch.isclose(grid, background, rtol=0, atol=1e-5)
        assert differs.sum() == 1, f"token {t}: {int(differs.sum())} cells differ"
        assert differs[planted_row, planted_col]


def test_capture_memory_does_not_grow_with_depth(tmp_path):
    sizes = []
    for depth in (1, 4):
        folder = save_tiny_flux(tmp_path / f"d{depth}", double_blocks=depth, single_blocks=depth)
        extractor = FluxExtractor(str(folder), torch_dtype="float32", resolution=64, caption_max_tokens=8)
        extractor.setup(torch.device("cpu"))
        x_t, grid, condition, encoded = _inputs(extractor)
        capture = extractor.new_capture(encoded, condition.embeds.shape[1], grid)
        before = (capture.scores.data_ptr(), capture.text_mass.data_ptr())
        extractor.forward(x_t, 0.75, grid, condition, encoded, capture)
        assert (capture.scores.data_ptr(), capture.text_mass.data_ptr()) == before  # accumulated in place
        assert capture.observations == 2 * depth
        sizes.append(sum(t.numel() * t.element_size() for t in vars(capture).values() if isinstance(t, torch.Tensor)))
    assert sizes[0] == sizes[1]


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


def test_a_folder_without_a_pipeline_is_a_checkpoint_error_naming_the_key_and_the_layout(tmp_path):
    from refam.errors import CheckpointError

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"model\.extractor\.init_args\.pretrained.*FluxPipeline\.save_pretrained"):
        FluxExtractor(str(tmp_path / "empty"), local_files_only=True).setup(torch.device("cpu"))
