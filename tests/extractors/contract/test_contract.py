"""The expression branch's contract (docs/backbones.md, section 1 and Step 6), on every backbone.

Each backbone is a tiny random model of its real diffusers classes (tests/extractors/contract/
entry_<name>.py). The claims: the branch leaves the velocity exactly the stock model's; K
expressions in one forward give the maps of K separate forwards; the maps are what the stock
modules and the stock RoPE give (recomputed independently, on a non-square grid, RoPE on); the
clean latent is the stock image-conditioned pipeline's; a planted latent cell lands on its frame,
row, column and pixel; the capture does not grow with depth or during a forward.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.video_template import VideoDiTExtractor
from refam.extractors.trajectory import NoiseAt
from refam.prompts.point import argmax_points
from tests.extractors.contract.contract import clean_latents, every_block_gaps, load_entries, noised_latent, recomputed_scores

ENTRIES = load_entries(Path(__file__).parent)
MAGNETS = AppendMagnets()
EXPRESSIONS = ["the red dog on the left", "a man", "the small blue car near the tree"]
CAPTION = "a dog and a man"
SIGMA = 0.6



@pytest.fixture(scope="module", params=ENTRIES, ids=[entry.name for entry in ENTRIES])
def backbone(request, tmp_path_factory):
    entry = request.param
    return entry, entry.save(tmp_path_factory.mktemp(entry.name) / "pipe", 2)


def _extractor(entry, folder, **overrides):
    extractor = entry.extractor_class(str(folder), **{**entry.settings, **overrides})
    extractor.setup(torch.device("cpu"))
    return extractor


def _stock(entry, folder):
    return entry.pipeline_class.from_pretrained(str(folder), dtype=torch.float32)


def _image(entry, seed=0):
    width, height = entry.image_size
    pixels = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(seed))
    return Image.fromarray((pixels * 255).to(torch.uint8).numpy())


def test_the_clean_latent_is_the_stock_pipelines(backbone):
    """The clean latent every other check takes from the extractor is the one the family's stock
    image-conditioned pipeline makes (pixels, VAE mode, normalisation, packing): a latent scaled
    or shifted wrongly would pass the others, which see the same wrong latent on both sides."""
    entry, folder = backbone
    ours, stock = clean_latents(entry, _extractor(entry, folder), _stock(entry, folder), _image(entry))
    assert ours.shape == stock.shape and ours.dtype == stock.dtype
    assert torch.equal(ours, stock), f"max difference {(ours - stock).abs().max():.3g}"


def test_the_timestep_is_the_schedulers(backbone):
    """At every noise level the pipeline's own scheduler visits (its sigmas, or its alphas_cumprod
    through add_noise), the extractor tells the transformer the timestep the pipeline tells it there;
    an integer scheduler's (Wan's UniPC) truncates, so within one unit above it, and within float32's
    rounding below (PixArt's DPM-Solver reads its levels through float32 sigmas: 874 comes back as
    873.9999975)."""
    entry, folder = backbone
    extractor, stock = _extractor(entry, folder), _stock(entry, folder)
    levels = entry.scheduler_levels(stock)
    assert len(levels) >= 4 and len({sigma for sigma, _ in levels}) == len(levels)
    integer = not stock.scheduler.timesteps.is_floating_point()
    for sigma, told in levels:
        ours = extractor.timestep(sigma)
        assert (told * (1 - 1e-6) <= ours < told + 1) if integer else ours == pytest.approx(told, rel=1e-5, abs=1e-6), \
            f"sigma {sigma:.6f}: told {ours}, the pipeline tells {told}"


def test_velocity_is_the_stock_models_bit_for_bit(backbone):
    entry, folder = backbone
    extractor = _extractor(entry, folder)
    sigma = entry.stock_sigma(_stock(entry, folder))
    latent, x_t = noised_latent(extractor, _image(entry), sigma, "velocity")
    encoded = extractor.encode_expressions([MAGNETS.augment(e) for e in EXPRESSIONS])
    condition = extractor.encode_caption(CAPTION)
    capture = extractor.new_capture(encoded, condition, latent.grid)
    with_branch = extractor.forward(x_t, sigma, latent.grid, condition, encoded, capture)
    with torch.no_grad():  # as the stock pipeline's __call__ runs
        stock = entry.stock_velocity(_stock(entry, folder), x_t, sigma, latent.grid, CAPTION)
    assert capture.observations == extractor.num_blocks
    assert capture.scores.abs().sum() > 0
    if not entry.velocity_exact:
        alone = extractor.forward(x_t, sigma, latent.grid, condition)
        assert torch.equal(with_branch, alone), f"the branch moved the velocity by {(with_branch - alone).abs().max():.3g}"
        torch.testing.assert_close(with_branch, stock, rtol=1e-5, atol=1e-5)
        return
    assert torch.equal(with_branch, stock), f"max difference {(with_branch - stock).abs().max():.3g}"


def _representations(entry):
    return ["cross_attention"] + (["attention_output"] if entry.extractor_class.attention_kind == "joint" else [])


@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_k_expressions_together_give_the_maps_each_gives_alone(backbone, softmax_stage):
    entry, folder = backbone
    image = _image(entry)
    for representation in _representations(entry):
        extractor = _extractor(entry, folder, softmax_stage=softmax_stage, representation=representation)
        together = extractor.extract(image, CAPTION, [MAGNETS.augment(e) for e in EXPRESSIONS], "k")
        for k, expression in enumerate(EXPRESSIONS):
            alone = extractor.extract(image, CAPTION, [MAGNETS.augment(expression)], "k")
            length = alone.valid.shape[1]
            assert together.valid[k, :length].equal(alone.valid[0]) and not together.valid[k, length:].any()
            torch.testing.assert_close(together.scores[k, :length], alone.scores[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(together.text_mass[k, :length], alone.text_mass[0], rtol=1e-4, atol=1e-6)
            assert [t.piece for t in together.tokens[k][:length]] == [t.piece for t in alone.tokens[0]]


def test_maps_are_the_stock_modules_with_the_stock_rope_on_a_non_square_grid(backbone):
    entry, folder = backbone
    stock = _stock(entry, folder)
    sigma = entry.stock_sigma(stock)
    extractor = _extractor(entry, folder, blocks=[0], trajectory=NoiseAt(sigma))
    image = _image(entry, seed=1)
    for expression in EXPRESSIONS[:2]:
        augmented = MAGNETS.augment(expression)
        maps = extractor.extract(image, CAPTION, [augmented], "recompute")
        assert maps.scores.shape[-2] != maps.scores.shape[-1], "the test needs a non-square token grid"
        expected = recomputed_scores(entry, stock, extractor, image, CAPTION, augmented, sigma, "recompute")
        torch.testing.assert_close(maps.scores[0].flatten(1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("magnets", [False, True], ids=["plain", "magnets"])
def test_an_expressions_rows_are_the_stock_encode_prompts(backbone, magnets):
    """What the branch's tokens ARE: the rows the stock pipeline's `encode_prompt` gives the same text
    (its template, its hidden layers, its projection-free width). The other checks read the
    extractor's own embeddings on both sides, so a reader of the wrong layer would pass them."""
    entry, folder = backbone
    extractor, stock = _extractor(entry, folder), _stock(entry, folder)
    for expression in EXPRESSIONS:
        text, start = MAGNETS.augment(expression) if magnets else (expression, None)
        encoded = extractor.encode_expressions([(text, start)])
        length = int(encoded.valid[0].sum())
        with torch.no_grad():
            expected = entry.stock_expression(stock, text, length)
        ours = encoded.embeds[0, encoded.valid[0]]
        assert ours.shape == expected.shape, f"{text!r}: {tuple(ours.shape)} rows, the pipeline's {tuple(expected.shape)}"
        torch.testing.assert_close(ours.float(), expected.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_maps_are_the_stock_attention_at_every_block(backbone, softmax_stage):
    entry, folder = backbone
    extractor = _extractor(entry, folder, trajectory=NoiseAt(SIGMA))
    gaps = every_block_gaps(entry, extractor, _image(entry, seed=2), CAPTION, MAGNETS.augment(EXPRESSIONS[0]), SIGMA,
                            softmax_stage, _representations(entry))
    assert max(gaps.values()) < 1e-4, {key: f"{gap:.2g}" for key, gap in gaps.items() if gap >= 1e-4}


def test_a_planted_latent_cell_lands_on_its_frame_row_column_and_pixel(backbone, monkeypatch):
    """A latent uniform but for one token's cells: with positional encodings off every other image
    token stays identical through all blocks (permutation symmetry), so exactly one cell of each
    token map differs: the planted one, on a non-square grid, and its point is the cell's pixel. A
    video backbone reads a clip, planted in its last latent frame: the clip's latent frames make
    tokens of `patch[0]` frames each, and the planted frame lands on the last token frame."""
    entry, folder = backbone
    extractor = _extractor(entry, folder, trajectory=NoiseAt(0.0))
    entry.positions_off(extractor.pipe.transformer, monkeypatch)
    image = _image(entry)
    video = [image] * extractor.clip_frames if isinstance(extractor, VideoDiTExtractor) else None
    vae, real_encode = extractor.pipe.vae, extractor.pipe.vae.encode
    shapes = []

    def recording_encode(*args, **kwargs):
        encoded = real_encode(*args, **kwargs)
        # the VAE's latent for this image or clip: its distribution's mode, or a deterministic encoder's latent (SANA's DC-AE)
        shapes.append((encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latent).shape)
        return encoded

    monkeypatch.setattr(vae, "encode", recording_encode)
    frames, rows, cols = (extractor.encode_clip(video) if video else extractor.encode_image(image)).grid
    assert rows != cols
    row, col = 1, cols - 2
    pt, ph, pw = entry.patch
    latent_frames = shapes[0][2] if video else 1  # a video VAE's latent is [1, C, F, h, w]
    assert frames == -(-latent_frames // pt), f"{latent_frames} latent frames of {pt} per token made {frames} token frames"
    planted = torch.zeros(shapes[0])
    cells = (slice(row * ph, (row + 1) * ph), slice(col * pw, (col + 1) * pw))
    planted[(slice(None), slice(None), -1, *cells) if video else (..., *cells)] = 3.0

    class _Encoded:
        latent_dist = type("D", (), {"mode": staticmethod(lambda *a, **k: planted), "sample": staticmethod(lambda *a, **k: planted)})
        latent = planted

    monkeypatch.setattr(vae, "encode", lambda *a, **k: _Encoded)
    expression = [MAGNETS.augment("the red dog")]
    if video:
        scores = extractor.extract_video(video, "", expression, "planted").scores[0]  # [T, F, h, w]
    else:
        maps = extractor.extract(image, "", expression, "planted")
        scores = maps.scores[0, :, None]
    assert scores.shape[-3:] == (frames, rows, cols)
    width, height = image.size
    for t in range(scores.shape[0]):
        grid = scores[t]
        difference = (grid - grid[0, rows - 1, 0]).abs()
        differs = difference > 1e-5 * grid.abs().max()
        assert differs.sum() == 1 and differs[frames - 1, row, col], f"token {t}: cells {differs.nonzero().tolist()} differ"
        x, y = argmax_points(difference[frames - 1][None], height, width)[0].tolist()
        assert col * width / cols <= x < (col + 1) * width / cols and row * height / rows <= y < (row + 1) * height / rows


def _footprint(capture) -> dict:
    """Each attribute of the capture: its type and size (a tensor's shape, a container's length)."""
    def size(value):
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
        return len(value) if isinstance(value, (list, tuple, dict, set)) else None

    return {name: (type(value), size(value)) for name, value in vars(capture).items()}


def test_capture_memory_does_not_grow_with_depth(backbone, tmp_path):
    """Maps are accumulated in place: the forward adds no attribute to the capture, changes none's type,
    grows no container and reallocates no accumulator, and a 3-block model's capture holds the same
    tensors as a 1-block one's (only its set of selected block indices is longer)."""
    entry, _ = backbone
    sizes, tensors = [], []
    for depth in (1, 3):
        extractor = _extractor(entry, entry.save(tmp_path / f"depth-{depth}", depth))
        latent, x_t = noised_latent(extractor, _image(entry), SIGMA, "memory")
        encoded = extractor.encode_expressions([MAGNETS.augment(e) for e in EXPRESSIONS])
        condition = extractor.encode_caption(CAPTION)
        capture = extractor.new_capture(encoded, condition, latent.grid)
        before = (capture.scores.data_ptr(), capture.text_mass.data_ptr())
        allocated = _footprint(capture)
        extractor.forward(x_t, SIGMA, latent.grid, condition, encoded, capture)
        assert (capture.scores.data_ptr(), capture.text_mass.data_ptr()) == before  # accumulated in place
        assert _footprint(capture) == allocated, "the forward added, retyped or grew the capture's attributes"
        assert capture.observations == entry.depth_observations(depth)
        sizes.append(sum(t.numel() * t.element_size() for t in vars(capture).values() if isinstance(t, torch.Tensor)))
        tensors.append({name: size for name, (kind, size) in allocated.items() if issubclass(kind, torch.Tensor)})
    assert sizes[0] == sizes[1]
    assert tensors[0] == tensors[1]
