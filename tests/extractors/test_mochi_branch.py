"""Mochi's own claims about the expression branch, on a tiny MochiPipeline: 3 blocks (the last
`context_pre_only`), text stream narrower than the video stream, random RoPE, the real causal
AutoencoderKLMochi (8x space, 6x time). The invariants every backbone keeps (the velocity is the
stock model's, K together = alone, block-0 maps recomputed from the stock modules and RoPE, a
planted cell on one frame, capture memory flat with depth) are tests/extractors/contract/."""

import pytest
import torch
from PIL import Image

from refam.aggregators.magnets import AppendMagnets
from refam.errors import CheckpointError, ConfigError
from refam.extractors.mochi import MochiExtractor
from refam.extractors.trajectory import NoiseAt, RFInversion, standard_noise
from refam.extractors.video import FrameSequence, frame_maps, frame_to_latent, plan_clips
from refam.testing.tiny_mochi import save_tiny_mochi

MAGNETS = AppendMagnets()
EXPRESSIONS = ["the red dog on the left", "a man", "the small blue car near the tree"]
HEIGHT, WIDTH = 48, 80  # a 3 x 5 token grid per latent frame
C = MochiExtractor.temporal_compression  # 6



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
    latent = extractor.encode_clip(_video(frames))
    x_t = 0.99 * latent.x0 + 0.01 * standard_noise(latent.x0, torch.Generator().manual_seed(0))
    encoded = extractor.encode_expressions([MAGNETS.augment(e) for e in expressions])
    return latent.grid, x_t, extractor.encode_caption(caption), encoded


# ------------------------------------------------------------------ the branch as caption padding


@pytest.mark.parametrize("force_zeros", [False, True])
def test_branch_changes_nothing_with_an_empty_caption(tiny_mochi_dir, tmp_path, force_zeros):
    """An empty caption is padding Mochi masks out; with force_zeros_for_empty_prompt it has no
    valid token at all, so the main stream is the video alone: the branch still leaves the
    velocity bit for bit as it is without the branch."""
    folder = save_tiny_mochi(tmp_path / "m", force_zeros_for_empty_prompt=True) if force_zeros else tiny_mochi_dir
    extractor = _extractor(folder)
    grid, x_t, condition, encoded = _state(extractor, caption="")
    assert int(condition.mask.sum()) == (0 if force_zeros else 1)  # T5's EOS, or nothing
    plain = extractor.forward(x_t, 0.01, grid, condition)
    capture = extractor.new_capture(encoded, condition, grid)
    with_branch = extractor.forward(x_t, 0.01, grid, condition, encoded, capture)
    assert capture.observations == extractor.num_blocks == 3 and capture.scores.abs().sum() > 0
    assert torch.equal(with_branch, plain), f"max difference {(with_branch - plain).abs().max():.3g}"


def test_expression_tokens_ride_the_text_stream_exactly_as_caption_tokens(mochi):
    """With the expression equal to the caption, the branch tokens see what the caption tokens see
    (the video and the same tokens), so in every block their hidden states equal the caption's:
    caption_proj, norm1_context modulation, add_q/k/v, norm_added_q/k and the context FF/residuals
    are all applied to them."""
    text = "the red dog on the left"
    grid, x_t, condition, _ = _state(mochi, caption=text)
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
        capture = mochi.new_capture(encoded, condition, grid)
        mochi.forward(x_t, mochi.trajectory.sigma, grid, condition, encoded, capture)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(seen) == mochi.num_blocks - 1
    for text_states in seen:
        torch.testing.assert_close(text_states[0, caption_len : caption_len + n], text_states[0, :n], rtol=1e-5, atol=1e-5)


def test_text_mass_is_a_share_of_attention(mochi):
    maps = mochi.extract_video(_video(7), "", [MAGNETS.augment("a man")], "s")
    mass = maps.text_mass[0][maps.valid[0]]
    assert (mass > 0).all() and mass.sum() < 1.0  # the rest of each query's attention went to the video


def test_video_maps_are_frame_major(tiny_mochi_dir, monkeypatch):
    """The contract plants a cell in one frame; here a latent uniform but for one 2x2 cell of latent
    frame 1 of 2: with RoPE off (zero frequencies) every other video token stays identical through
    all blocks, so exactly one cell of each token's [F_lat, h, w] map differs, the planted (frame,
    row, column) of a 2 x 3 x 5 grid, where every wrong order of the three axes moves it."""
    extractor = _extractor(tiny_mochi_dir, trajectory=NoiseAt(0.0))
    transformer = extractor.pipe.transformer
    monkeypatch.setattr(transformer.pos_frequencies, "data", torch.zeros_like(transformer.pos_frequencies))
    latents, rows, cols = 2, HEIGHT // 16, WIDTH // 16
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
    assert frame_to_latent(1, 25, "first", C) == [0]
    assert frame_to_latent(7, 25, "first", C) == [0, 1, 1, 1, 1, 1, 1]
    assert frame_to_latent(13, 25, "first", C) == [0] + [1] * 6 + [2] * 6
    assert frame_to_latent(13, 7, "first", C) == [0] + [1] * 6  # frames 7..12 not encoded
    assert frame_to_latent(13, 7, "all", C) == [0] + [1] * 6 + [2] + [3] * 5  # a 6-frame clip padded to 7
    assert frame_to_latent(8, 7, "all", C) == [0] + [1] * 6 + [2]  # a 1-frame clip needs no padding
    assert [(c.start, c.stop, c.length, c.latent_start) for c in plan_clips(9, 7, "all", C)] == [(0, 7, 7, 0), (7, 9, 7, 2)]
    assert [(c.start, c.stop, c.length) for c in plan_clips(10, 25, "first", C)] == [(0, 10, 13)]
    with pytest.raises(ValueError, match="6k \\+ 1"):
        plan_clips(10, 8, "first", C)


def test_the_mapping_is_the_vae_causal_compression(mochi):
    """Changing pixel frame f of a 13-frame clip changes latent frame_to_latent[f] and no earlier one."""
    vae = mochi.pipe.vae
    assert vae.temporal_compression_ratio == C
    pixels = torch.rand(1, 3, 13, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mapping = frame_to_latent(13, 13, "first", C)
    with torch.no_grad():
        base = vae.encode(pixels).latent_dist.mode()
        for f in (0, 1, 6, 7, 12):
            changed = pixels.clone()
            changed[:, :, f] += 0.5
            diff = (vae.encode(changed).latent_dist.mode() - base).abs().amax(dim=(0, 1, 3, 4))
            first = int(torch.nonzero(diff > 1e-6)[0])
            assert first == mapping[f], f"frame {f}"


# ------------------------------------------------------------------ the noise level


def test_sigma_reading_the_timestep_mochi_is_told_and_the_sign_of_its_output(mochi, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert mochi.trajectory.sigma == 0.01 and not mochi.trajectory.shift  # the paper's "timestep 990", Mochi's convention
    assert mochi.timestep(0.01) == pytest.approx(990.0) and mochi.timestep(0.75) == pytest.approx(250.0)
    # Mochi's scheduler (invert_sigmas) gives the transformer 1000 (1 - sigma) for noise level sigma
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(mochi.pipe.scheduler.config)
    assert scheduler.config.invert_sigmas
    scheduler.set_timesteps(sigmas=[0.5, 0.25], device="cpu")
    assert scheduler.timesteps.tolist() == pytest.approx([mochi.timestep(0.5), mochi.timestep(0.25)])
    # and steps with the output as x0 - eps: an Euler step in sigma with velocity_sign * output = eps - x0
    x, out = torch.randn(4, generator=torch.Generator().manual_seed(0)), torch.randn(4, generator=torch.Generator().manual_seed(1))
    stepped = scheduler.step(out, scheduler.timesteps[0], x, return_dict=False)[0]
    torch.testing.assert_close(stepped, x + (0.25 - 0.5) * (mochi.velocity_sign * out))

    seen = {}
    forward = mochi.pipe.transformer.forward

    def spy(**kwargs):
        seen.update(kwargs)
        return forward(**kwargs)

    monkeypatch.setattr(mochi.pipe.transformer, "forward", spy)
    frames = _video(7, seed=9)
    mochi.extract_video(frames, "a dog", [MAGNETS.augment("a dog")], "sigma")
    x0 = mochi.encode_clip(frames).x0
    eps = standard_noise(x0, mochi.generator("sigma"))
    torch.testing.assert_close(seen["hidden_states"], 0.99 * x0 + 0.01 * eps)
    assert seen["timestep"].dtype == torch.float32 and seen["timestep"].tolist() == [990.0]


@pytest.mark.parametrize("trajectory", [lambda shift: RFInversion(steps=2, shift=shift), lambda shift: NoiseAt(0.01, shift=shift)],
                         ids=["rf-inversion", "noise-at"])
def test_a_noise_shift_is_refused_at_setup_naming_mochi_and_shift(tiny_mochi_dir, trajectory):
    """Mochi's pipeline schedules without a shift: a trajectory asking for one is a one-line
    ConfigError at setup, on the trajectory's `shift`, naming the backbone; without it, it runs."""
    extractor = MochiExtractor(str(tiny_mochi_dir), torch_dtype="float32", height=HEIGHT, width=WIDTH, clip_frames=7,
                               caption_max_tokens=16, trajectory=trajectory(shift=True))
    with pytest.raises(ConfigError, match=r"^trajectory\.shift: MochiExtractor .*shift: false$") as raised:
        extractor.setup(torch.device("cpu"))
    assert raised.value.field == "shift" and "\n" not in str(raised.value)
    assert extractor.pipe is None  # nothing half set up
    extractor = _extractor(tiny_mochi_dir, trajectory=trajectory(shift=False))
    maps = extractor.extract_video(_video(7), "a dog", [MAGNETS.augment("a dog")], "shift")
    assert torch.isfinite(maps.scores).all() and maps.scores.abs().sum() > 0


# ------------------------------------------------------------------ loading and settings


def test_missing_folder_raises_checkpoint_error_naming_the_field(tmp_path):
    with pytest.raises(CheckpointError, match="^pretrained: "):
        MochiExtractor(str(tmp_path / "no-such-folder")).setup(torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="^pretrained: .*MochiPipeline"):
        MochiExtractor(str(tmp_path / "empty"), local_files_only=True).setup(torch.device("cpu"))


@pytest.mark.parametrize(
    "settings, field",
    [({"clip_frames": 8}, "clip_frames"), ({"height": 40}, "height"), ({"windows": "middle"}, "windows"),
     ({"softmax_stage": "x"}, "softmax_stage")],
)
def test_bad_settings_name_their_field(settings, field):
    with pytest.raises(ConfigError, match=f"^{field}: ") as raised:
        MochiExtractor("unused", **settings)
    assert raised.value.field == field


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
    clean = _extractor(tiny_mochi_dir, windows="all", trajectory=NoiseAt(0.0))
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
