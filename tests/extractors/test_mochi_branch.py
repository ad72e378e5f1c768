"""The expression branch on Mochi (DESIGN.md, "The expression branch"), on a tiny MochiPipeline:
3 blocks (the last `context_pre_only`), text stream narrower than the video stream, random RoPE,
the real causal AutoencoderKLMochi (8x space, 6x time)."""

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.errors import CheckpointError, ConfigError
from refam.extractors.base import sample_seed
from refam.extractors.mochi import (
    FrameSequence,
    MochiExtractor,
    frame_maps,
    frame_to_latent,
    mochi_timestep,
    plan_clips,
    sigma_of_mochi_timestep,
)
from refam.extractors.mochi_capture import MochiBranchProcessor, apply_mochi_rope
from refam.extractors.trajectory import standard_noise
from refam.testing.tiny_mochi import save_tiny_mochi

MAGNETS = AppendMagnets()
EXPRESSIONS = ["the red dog on the left", "a man", "the small blue car near the tree"]
HEIGHT, WIDTH = 48, 80  # a 3 x 5 token grid per latent frame


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny forwards on a shared machine: one intra-op thread (see test_rf_inversion.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_mochi_dir(tmp_path_factory):
    return save_tiny_mochi(tmp_path_factory.mktemp("tiny-mochi") / "mochi")


def _extractor(folder, **kwargs):
    settings = dict(torch_dtype="float32", height=HEIGHT, width=WIDTH, clip_frames=7, caption_max_tokens=16)
    settings.update(kwargs)
    extractor = MochiExtractor(str(folder), **settings)
    extractor.setup(torch.device("cpu"))
    return extractor


@pytest.fixture(scope="module")
def mochi(tiny_mochi_dir):
    return _extractor(tiny_mochi_dir)


def _video(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for _ in range(n):
        pixels = (torch.rand(HEIGHT // 2, WIDTH // 2, 3, generator=generator) * 255).to(torch.uint8).numpy()
        frames.append(Image.fromarray(pixels).resize((WIDTH + 16, HEIGHT + 8)))
    return frames


class _CountingFrames(FrameSequence):
    def __init__(self, frames):
        self.reads = []
        super().__init__(len(frames), lambda i: (self.reads.append(i), frames[i])[1])


def _state(extractor, caption="a dog and a man", expressions=EXPRESSIONS, frames=7):
    x0 = extractor.encode_clip(_video(frames))
    x_t = extractor.noised(x0, torch.Generator().manual_seed(0))
    encoded = extractor.encode_expressions([MAGNETS.augment(e) for e in expressions])
    return x_t, extractor.encode_caption(caption), encoded


# ------------------------------------------------------------------ invariant 1: invisible branch


@pytest.mark.parametrize("caption", ["a dog and a man", ""])
@pytest.mark.parametrize("force_zeros", [False, True])
def test_branch_is_invisible_to_the_denoising_stream(tiny_mochi_dir, tmp_path, caption, force_zeros):
    """force_zeros_for_empty_prompt: an empty caption has no valid token at all."""
    folder = save_tiny_mochi(tmp_path / "m", force_zeros_for_empty_prompt=True) if force_zeros else tiny_mochi_dir
    extractor = _extractor(folder)
    x_t, condition, encoded = _state(extractor, caption)
    plain = extractor.forward(x_t, extractor.sigma, condition)
    capture = extractor.new_capture(encoded, condition.embeds.shape[1], x_t.shape[2] * 3 * 5)
    before = (capture.scores.data_ptr(), capture.text_mass.data_ptr())
    with_branch = extractor.forward(x_t, extractor.sigma, condition, encoded, capture)
    assert capture.observations == extractor.num_blocks == 3
    assert (capture.scores.data_ptr(), capture.text_mass.data_ptr()) == before  # accumulated in place
    assert capture.scores.abs().sum() > 0
    torch.testing.assert_close(with_branch, plain, rtol=1e-5, atol=1e-6)


def test_without_capture_the_processor_is_the_stock_one(mochi):
    from diffusers.models.attention_processor import MochiAttnProcessor2_0

    x_t, condition, _ = _state(mochi)
    ours = mochi.forward(x_t, 0.3, condition)
    blocks = mochi.pipe.transformer.transformer_blocks
    assert all(isinstance(b.attn1.processor, MochiBranchProcessor) for b in blocks)
    try:
        for block in blocks:
            block.attn1.processor = MochiAttnProcessor2_0()
        stock = mochi.forward(x_t, 0.3, condition)
    finally:
        for block, processor in zip(blocks, mochi.processors):
            block.attn1.processor = processor
    assert ours.equal(stock)


# ------------------------------------------------------------------ invariant 2: K in one forward


@pytest.mark.parametrize("representation", ["cross_attention", "attention_output"])
@pytest.mark.parametrize("softmax_stage", ["after_mean", "per_head"])
def test_k_expressions_in_one_forward_equal_k_separate_forwards(tiny_mochi_dir, softmax_stage, representation):
    extractor = _extractor(tiny_mochi_dir, softmax_stage=softmax_stage, representation=representation)
    frames = _video(7, seed=3)
    together = extractor.extract_video(frames, "a scene", [MAGNETS.augment(e) for e in EXPRESSIONS], "video-1")
    assert together.kind == ("logits" if softmax_stage == "after_mean" else "probs")
    for k, expression in enumerate(EXPRESSIONS):
        alone = extractor.extract_video(frames, "a scene", [MAGNETS.augment(expression)], "video-1")
        length = alone.valid.shape[1]
        assert together.valid[k, :length].equal(alone.valid[0])
        assert not together.valid[k, length:].any()
        torch.testing.assert_close(together.scores[k, :length], alone.scores[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together.text_mass[k, :length], alone.text_mass[0], rtol=1e-4, atol=1e-6)
        assert [t.piece for t in together.tokens[k][:length]] == [t.piece for t in alone.tokens[0]]


# ------------------------------------------------------------------ the branch follows the text stream


def test_expression_tokens_ride_the_text_stream_exactly_as_caption_tokens(mochi):
    """With the expression equal to the caption, the branch tokens see what the caption tokens see
    (the video and the same tokens), so in every block their hidden states equal the caption's:
    caption_proj, norm1_context modulation, add_q/k/v, norm_added_q/k and the context FF/residuals
    are all applied to them."""
    text = "the red dog on the left"
    x_t, condition, _ = _state(mochi, caption=text)
    encoded = mochi.encode_expressions([(text, None)])  # no magnets: the very caption
    n = int(condition.mask.sum())
    assert n == encoded.valid.shape[1] == int(encoded.valid.sum())
    caption_len = condition.embeds.shape[1]
    seen = []
    hooks = [
        block.register_forward_hook(lambda module, args, output: seen.append(output[1].clone()))
        for block in mochi.pipe.transformer.transformer_blocks[:-1]  # the last block leaves the text as it is
    ]
    try:
        capture = mochi.new_capture(encoded, caption_len, x_t.shape[2] * 15)
        mochi.forward(x_t, mochi.sigma, condition, encoded, capture)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == mochi.num_blocks - 1
    for text_states in seen:
        torch.testing.assert_close(text_states[0, caption_len : caption_len + n], text_states[0, :n], rtol=1e-5, atol=1e-5)


def test_first_block_scores_are_video_query_times_expression_key(tiny_mochi_dir):
    """Block 0 recomputed by hand from the model's modules: video query after norm_q and RoPE,
    expression key after caption_proj, norm1_context, add_k_proj and norm_added_k (no RoPE);
    q . k / sqrt(d), mean over heads, in the frame-major (frame, row, column) layout."""
    extractor = _extractor(tiny_mochi_dir, blocks=[0])
    frames = _video(7, seed=5)
    expression = MAGNETS.augment("the small blue car")
    maps = extractor.extract_video(frames, "a car", [expression], "s-0")
    transformer = extractor.pipe.transformer
    block = transformer.transformer_blocks[0]
    attn = block.attn1
    with torch.no_grad():
        x0 = extractor.encode_clip(frames)
        x_t = extractor.noised(x0, torch.Generator("cpu").manual_seed(sample_seed(extractor.seed, "s-0")))
        condition = extractor.encode_caption("a car")
        encoded = extractor.encode_expressions([expression])
        timestep = torch.full((1,), mochi_timestep(extractor.sigma))
        temb, _ = transformer.time_embed(timestep, condition.embeds, condition.mask, hidden_dtype=x_t.dtype)
        expr = transformer.time_embed.caption_proj(encoded.embeds)  # [1, L, text width]
        expr = block.norm1_context(expr, temb)[0]
        key = attn.norm_added_k(attn.add_k_proj(expr).unflatten(2, (attn.heads, -1)))[0]  # [L, H, D]
        _, _, latents, lh, lw = x_t.shape
        video = transformer.patch_embed(x_t.permute(0, 2, 1, 3, 4).flatten(0, 1)).unflatten(0, (1, -1)).flatten(1, 2)
        video = block.norm1(video, temb)[0]
        query = attn.norm_q(attn.to_q(video).unflatten(2, (attn.heads, -1)))
        rope = transformer.rope(transformer.pos_frequencies, latents, lh // 2, lw // 2, dtype=torch.float32)
        query = apply_mochi_rope(query, *rope)[0]  # [N, H, D]
        expected = torch.einsum("nhd,lhd->lnh", query, key).mean(dim=-1) / query.shape[-1] ** 0.5  # [L, N]
    assert maps.scores.shape == (1, key.shape[0], latents, lh // 2, lw // 2)
    torch.testing.assert_close(maps.scores[0], expected.reshape(-1, latents, lh // 2, lw // 2), rtol=1e-4, atol=1e-5)


def test_text_mass_is_a_share_of_attention(mochi):
    maps = mochi.extract_video(_video(7), "", [MAGNETS.augment("a man")], "s")
    mass = maps.text_mass[0][maps.valid[0]]
    assert (mass > 0).all() and mass.sum() < 1.0  # the rest of each query's attention went to the video


# ------------------------------------------------------------------ invariant 3: the layout


def test_planted_latent_cell_lands_at_its_frame_row_and_column(tiny_mochi_dir, monkeypatch):
    """A latent that is uniform except for one 2x2 cell of one latent frame: with RoPE switched off
    (zero frequencies) every other video token stays identical through all blocks, so exactly one
    cell of each token's [F_lat, h, w] map differs, and it must be the planted (frame, row, column)
    of a non-square grid: catches transposed grids and a wrong frame-major order."""
    extractor = _extractor(tiny_mochi_dir, sigma=0.0)
    transformer = extractor.pipe.transformer
    monkeypatch.setattr(transformer.pos_frequencies, "data", torch.zeros_like(transformer.pos_frequencies))
    latents, rows, cols = 2, HEIGHT // 16, WIDTH // 16  # 2 x 3 x 5: every wrong order changes the cell
    planted = (1, rows - 1, 1)
    latent = torch.zeros(1, 12, latents, 2 * rows, 2 * cols)
    f, r, c = planted
    latent[:, :, f, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 3.0

    class _Encoded:
        latent_dist = type("D", (), {"mode": staticmethod(lambda: latent)})

    monkeypatch.setattr(extractor.pipe.vae, "encode", lambda pixels: _Encoded)
    maps = extractor.extract_video(_video(7), "", [MAGNETS.augment("the red dog")], "planted")
    assert maps.scores.shape[2:] == (latents, rows, cols) and len({latents, rows, cols}) == 3
    for t in range(int(maps.valid[0].sum())):
        grid = maps.scores[0, t]
        differs = ~torch.isclose(grid, grid[0, 0, 0], rtol=0, atol=1e-5)
        assert differs.sum() == 1, f"token {t}: {int(differs.sum())} cells differ"
        assert differs[planted]


# ------------------------------------------------------------------ frames and latent frames


def test_frame_to_latent_mapping():
    assert frame_to_latent(1, 25) == [0]
    assert frame_to_latent(7, 25) == [0, 1, 1, 1, 1, 1, 1]
    assert frame_to_latent(13, 25) == [0] + [1] * 6 + [2] * 6
    assert frame_to_latent(13, 7, "first") == [0] + [1] * 6  # frames 7..12 not encoded
    assert frame_to_latent(13, 7, "all") == [0] + [1] * 6 + [2] + [3] * 5  # a 6-frame clip padded to 7
    assert frame_to_latent(8, 7, "all") == [0] + [1] * 6 + [2]  # a 1-frame clip needs no padding
    assert [(c.start, c.stop, c.length, c.latent_start) for c in plan_clips(9, 7, "all")] == [(0, 7, 7, 0), (7, 9, 7, 2)]
    assert [(c.start, c.stop, c.length) for c in plan_clips(10, 25)] == [(0, 10, 13)]
    with pytest.raises(ValueError, match="6k \\+ 1"):
        plan_clips(10, 8)


def test_the_mapping_is_the_vae_causal_compression(mochi):
    """Changing pixel frame f of a 13-frame clip changes latent frame_to_latent[f] and no earlier one."""
    vae = mochi.pipe.vae
    pixels = torch.rand(1, 3, 13, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mapping = frame_to_latent(13, 13)
    with torch.no_grad():
        base = vae.encode(pixels).latent_dist.mode()
        for f in (0, 1, 6, 7, 12):
            changed = pixels.clone()
            changed[:, :, f] += 0.5
            diff = (vae.encode(changed).latent_dist.mode() - base).abs().amax(dim=(0, 1, 3, 4))
            first = int(torch.nonzero(diff > 1e-6)[0])
            assert first == mapping[f], f"frame {f}"


# ------------------------------------------------------------------ the noise level


def test_sigma_reading_and_the_timestep_mochi_is_told(mochi, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert mochi.sigma == 0.01  # the paper's "timestep 990" in Mochi's convention
    assert mochi_timestep(0.01) == pytest.approx(990.0) and sigma_of_mochi_timestep(990.0) == pytest.approx(0.01)
    # Mochi's scheduler (invert_sigmas) gives the transformer 1000 (1 - sigma) for noise level sigma
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(mochi.pipe.scheduler.config)
    assert scheduler.config.invert_sigmas
    scheduler.set_timesteps(sigmas=[0.01, 0.75], device="cpu")
    assert scheduler.timesteps.tolist() == pytest.approx([mochi_timestep(0.01), mochi_timestep(0.75)])

    seen = {}
    forward = mochi.pipe.transformer.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return forward(**kwargs)

    monkeypatch.setattr(mochi.pipe.transformer, "forward", spy)
    frames = _video(7, seed=9)
    mochi.extract_video(frames, "a dog", [MAGNETS.augment("a dog")], "sigma")
    x0 = mochi.encode_clip(frames)
    eps = standard_noise(x0, torch.Generator("cpu").manual_seed(sample_seed(mochi.seed, "sigma")))
    torch.testing.assert_close(seen["hidden_states"], 0.99 * x0 + 0.01 * eps)
    assert seen["timestep"].dtype == torch.float32 and seen["timestep"].tolist() == [990.0]


# ------------------------------------------------------------------ loading and settings


def test_missing_folder_raises_checkpoint_error_naming_the_key(tmp_path):
    with pytest.raises(CheckpointError, match="model.extractor.init_args.pretrained"):
        MochiExtractor(str(tmp_path / "no-such-folder")).setup(torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.extractor.init_args.pretrained"):
        MochiExtractor(str(tmp_path / "empty"), local_files_only=True).setup(torch.device("cpu"))


@pytest.mark.parametrize(
    "settings, key",
    [({"clip_frames": 8}, "clip_frames"), ({"height": 40}, "height"), ({"windows": "middle"}, "windows"),
     ({"sigma": 1.5}, "sigma"), ({"softmax_stage": "x"}, "softmax_stage")],
)
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError, match=f"init_args.{key}"):
        MochiExtractor("unused", **settings)


# ------------------------------------------------------------------ extract_video end to end


def test_extract_video_runs_end_to_end_and_is_deterministic_per_seed_and_sample(mochi, tiny_mochi_dir):
    frames = _video(9, seed=1)
    expressions = [MAGNETS.augment(e) for e in EXPRESSIONS[:2]]
    counted = _CountingFrames(frames)
    a = mochi.extract_video(counted, "a dog and a man", expressions, "id-1")
    assert counted.reads == list(range(7))  # windows "first": only the first clip is read, once
    k, length = a.valid.shape
    assert a.scores.shape == (k, length, 2, HEIGHT // 16, WIDTH // 16) and a.scores.dtype == torch.float32
    assert a.frame_to_latent == [0, 1, 1, 1, 1, 1, 1]
    assert torch.isfinite(a.scores).all()
    b = mochi.extract_video(frames, "a dog and a man", expressions, "id-1")
    c = mochi.extract_video(frames, "a dog and a man", expressions, "id-2")
    d = _extractor(tiny_mochi_dir, seed=1).extract_video(frames, "a dog and a man", expressions, "id-1")
    assert a.scores.equal(b.scores) and a.text_mass.equal(b.text_mass)
    assert not a.scores.equal(c.scores)
    assert not a.scores.equal(d.scores)
    first = frame_maps(a, 3)
    assert first.scores.equal(a.scores[:, :, 1]) and first.frame_to_latent is None
    with pytest.raises(IndexError, match="not encoded"):
        frame_maps(a, 7)


def test_windows_all_covers_every_frame_of_a_14_frame_video(tiny_mochi_dir):
    extractor = _extractor(tiny_mochi_dir, windows="all")
    frames = _CountingFrames(_video(14, seed=2))
    maps = extractor.extract_video(frames, "", [MAGNETS.augment("a dog")], "long")
    assert frames.reads == list(range(14))  # each frame read once, clip after clip
    assert maps.frame_to_latent == [0] + [1] * 6 + [2] + [3] * 6
    assert maps.scores.shape[2] == 4
    # each clip is encoded and observed on its own, in order: at sigma 0 (no noise draw), the
    # clips' maps are those of two videos made of their frames
    clean = _extractor(tiny_mochi_dir, windows="all", sigma=0.0)
    video = _video(14, seed=2)
    whole = clean.extract_video(video, "", [MAGNETS.augment("a dog")], "long")
    for latents, part in ((slice(0, 2), video[:7]), (slice(2, 4), video[7:])):
        alone = clean.extract_video(part, "", [MAGNETS.augment("a dog")], "long")
        torch.testing.assert_close(whole.scores[:, :, latents], alone.scores)


def test_a_video_sample_is_read_lazily_from_disk(mochi, tmp_path):
    from refam.types import VideoSample

    paths = []
    for i, frame in enumerate(_video(3, seed=4)):
        paths.append(str(tmp_path / f"{i:05d}.jpg"))
        frame.save(paths[-1])
    sample = VideoSample(sample_id="v", frames=paths, expressions=[])
    maps = mochi.extract_video(sample, "", [MAGNETS.augment("a cat")], "v")
    assert maps.frame_to_latent == [0, 1, 1]  # 3 frames padded to 7: two latent frames
    assert maps.scores.shape[2] == 2


def test_image_extract_is_a_one_frame_video(mochi):
    image = Image.new("RGB", (100, 60), (30, 160, 30))
    maps = mochi.extract(image, "", [MAGNETS.augment(e) for e in EXPRESSIONS], "img")
    video = mochi.extract_video([image], "", [MAGNETS.augment(e) for e in EXPRESSIONS], "img")
    assert maps.scores.shape == (3, maps.valid.shape[1], HEIGHT // 16, WIDTH // 16)
    assert maps.frame_to_latent is None and video.frame_to_latent == [0]
    assert maps.scores.equal(video.scores[:, :, 0])
