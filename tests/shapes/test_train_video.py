"""refam-shapes-video's training reads the maps inference reads: the grounding term's capture in a
training batch equals `MochiExtractor`'s capture of each clip alone, and the branch leaves the
velocity (the flow loss) unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refam.aggregators.magnets import AppendMagnets
from refam.extractors.mochi import MochiExtractor
from refam.shapes.grounding import Expression, GroundingTerm
from refam.shapes.motion import make_motion_clip
from refam.shapes.train_video import LatentClips, VideoFlowStage, clip_targets, window
from refam.shapes.video_model import CLIP_FRAMES, FRAME, TEMPORAL
from refam.testing.tiny_mochi import save_tiny_mochi

MAGNETS, NONE = AppendMagnets(), AppendMagnets([])


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    folder = save_tiny_mochi(tmp_path_factory.mktemp("tiny-mochi") / "mochi")
    extractor = MochiExtractor(str(folder), torch_dtype="float32", height=48, width=80, clip_frames=7,
                               caption_max_tokens=16)
    extractor.setup(torch.device("cpu"))
    return extractor


def test_training_capture_equals_the_extractors_capture_per_clip(extractor):
    pipe = extractor.pipe
    stage = VideoFlowStage(pipe, LatentClips(torch.zeros(0), [], []), lr=1e-3, caption_tokens=16, empty_caption_rate=0.0,
                           seed=0, ground_weight=0.0, ground_share=0.5)
    # the stage installed its own branch processors (the extractor's class) in the shared transformer
    extractor.processors = stage.processors
    term = GroundingTerm(pipe.tokenizer, pipe.text_encoder, expressions_per_scene=2)
    rows = [[("the red dog on the left", MAGNETS), ("a man", NONE)], [("the small blue car near the tree", MAGNETS)]]
    drawn = [[(Expression(*strategy.augment(text), 0), strategy) for text, strategy in row] for row in rows]
    generator = torch.Generator().manual_seed(0)
    frames = [[np.uint8(torch.randint(0, 255, (24, 40, 3), generator=generator)) for _ in range(7)] for _ in range(2)]
    from PIL import Image

    latents = [extractor.encode_clip([Image.fromarray(f).resize((80, 48)) for f in clip]) for clip in frames]
    grid = latents[0].grid
    sigma = 0.1
    x_t = torch.cat([(1 - sigma) * latent.x0 + sigma * torch.randn(latent.x0.shape, generator=generator) for latent in latents])
    condition = extractor.encode_caption("a dog and a man")
    with torch.no_grad():
        embeds, valid, kept = term.encode(drawn, torch.device("cpu"))
        velocity, capture = stage.denoise(x_t, torch.full((2,), sigma), condition.embeds.expand(2, -1, -1),
                                          condition.mask.expand(2, -1), embeds, valid)
        logits = capture.logits()  # [B, N, K, L]
    for b, row in enumerate(drawn):
        single = extractor.encode_expressions([(e.text, e.magnet_start) for e, _ in row])
        alone = extractor.new_capture(single, condition, grid)
        plain = extractor.forward(x_t[b : b + 1], sigma, grid, condition)
        extractor.forward(x_t[b : b + 1], sigma, grid, condition, single, alone)
        scores, _ = alone.result()  # [K, L, N]
        k, length = single.valid.shape
        assert valid[b, :k, :length].equal(single.valid) and not valid[b, :k, length:].any()
        torch.testing.assert_close(logits[b, :, :k, :length].permute(1, 2, 0), scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(velocity[b : b + 1], plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frames", [8, 13, 32])
def test_the_window_is_the_extractors_first_clip(frames):
    """Training sees the frames MochiExtractor encodes (a short clip padded with its last frame),
    and each latent frame's targets are the frames it holds: frame 0 alone, then six each."""
    clip = make_motion_clip("train", 0, frames=frames)
    indices, latents = window(clip)
    assert len(indices) == CLIP_FRAMES and indices[: min(frames, CLIP_FRAMES)] == list(range(min(frames, CLIP_FRAMES)))
    assert latents == [0] + [1] * TEMPORAL + [2] * TEMPORAL
    pixels, cover = clip_targets(clip)
    assert pixels.shape == (3, CLIP_FRAMES, *FRAME)
    cells = (FRAME[0] // 16) * (FRAME[1] // 16)
    assert cover.shape == (len(clip.objects), 3 * cells)
    first = cover[:, :cells]
    for k in range(len(clip.objects)):  # latent 0's target is frame 0's mask
        assert first[k].sum() > 0
    moving = [k for k, o in enumerate(clip.objects) if o.motion != "still"]
    for k in moving:  # a mover's cells differ between the first and last latent frame
        assert not torch.allclose(cover[k, :cells], cover[k, 2 * cells :])


def test_rope_frequencies_turn_a_token_step_alike_in_time_and_space():
    """A token is ROPE_STEP position units apart in space but one in time: drawn alike in units, the
    rows' and columns' rotations scrambled every query and the grounding term did not train."""
    from refam.shapes.video_model import ROPE_STEP, VideoModelConfig, build_video_components

    config = VideoModelConfig()
    frequencies = build_video_components(config, seed=0)["transformer"].pos_frequencies.detach()
    fixed = config.rope_fixed_dims // 2
    assert frequencies[:, :, :fixed].abs().max() == 0
    turned = frequencies[:, :, fixed:]
    time_step, row_step, column_step = (turned[0].std(), turned[1].std() * ROPE_STEP, turned[2].std() * ROPE_STEP)
    assert 0.3 < time_step < 0.7 and 0.3 < row_step < 0.7 and 0.3 < column_step < 0.7


def autoencoder_input_gradient(config) -> float:
    """The largest gradient at the encoder's input layer after one reconstruction step on crops
    whose frames are each one flat colour, as much of a shapes frame is."""
    from refam.shapes.video_model import build_video_components

    vae = build_video_components(config, seed=0)["vae"]
    colours = torch.tensor([[0.6, -0.2, 0.1], [-0.5, 0.4, 0.9]]).view(2, 3, 1, 1, 1)
    crops = colours.expand(2, 3, 7, 32, 32).contiguous()
    reconstruction = vae.decode(vae.encode(crops).latent_dist.mode()).sample
    torch.nn.functional.mse_loss(reconstruction, crops).backward()
    return vae.encoder.proj_in.weight.grad.abs().max().item()


def test_the_autoencoders_gradient_stays_finite_on_flat_frames():
    """Mochi's GroupNorm has 32 groups, per frame: at 32 channels each group is one channel with no
    variance on a flat frame, and every norm multiplied the gradient by ~316 (1e20 and more at the
    input; the autoencoder never learned). The shipped widths keep two channels a group and more.
    Measured: 7.8e3 at the shipped widths; 4e19 at 32 everywhere, 6e7 with 32 in the encoder's first
    levels only, 4e7 with a 32-wide decoder."""
    from refam.shapes.video_model import VideoModelConfig

    assert autoencoder_input_gradient(VideoModelConfig()) < 1e5


def test_latent_frame_means_follow_the_causal_latent_frames():
    from refam.shapes.video_autoencoder import latent_frame_means

    pixels = torch.arange(13.0).view(1, 1, 13, 1, 1).expand(2, 3, 13, 4, 4)
    means = latent_frame_means(pixels)
    assert means.shape == (2, 3, 3, 4, 4)
    assert means[0, 0, :, 0, 0].tolist() == [0.0, 3.5, 9.5]  # frame 0 alone, then frames 1-6, 7-12


def test_the_cosine_schedule_warms_up_then_falls_to_its_floor_at_the_last_step():
    from refam.shapes.train_video import WARMUP_STEPS, lr_factor

    steps = range(0, 3000, 7)
    cosine = [lr_factor(s, "cosine", 3000) for s in steps]
    assert lr_factor(0, "cosine", 3000) == lr_factor(0, "constant", 3000) < 0.01
    assert lr_factor(WARMUP_STEPS, "cosine", 3000) == 1.0 and lr_factor(2999, "cosine", 3000) == pytest.approx(0.1, abs=1e-3)
    after = [f for s, f in zip(steps, cosine) if s >= WARMUP_STEPS]
    assert all(a >= b for a, b in zip(after, after[1:]))  # never rises again after the warm-up
    assert lr_factor(1600, "cosine", 3000) == pytest.approx(0.55, abs=0.01)  # half-way down at mid-run
    assert all(lr_factor(s, "constant", 3000) == 1.0 for s in range(WARMUP_STEPS, 3000, 100))


def test_the_velocity_field_is_each_shapes_velocity_in_the_resized_frame():
    """Signs and axes as the frame: a shape moving right reads +x, one moving down +y; the speed is
    scaled with the resize to FRAME (x and y apart on a non-square clip); the background reads 0."""
    from refam.shapes.motion import Mover, MotionClip
    from refam.shapes.video_autoencoder import SPEED_SCALE, velocity_field

    right = Mover("square", "red", (220, 30, 30), 30.0, 40.0, 10.0, 2.0, 0.0, "right")
    down = Mover("circle", "blue", (30, 30, 220), 120.0, 20.0, 9.0, 0.0, 1.5, "down")
    clip = MotionClip(160, 80, (128, 128, 128), [right, down], 8, [])
    field = velocity_field(clip, [clip.frame(0), clip.frame(3)])
    sx, sy = FRAME[1] / 160, FRAME[0] / 80
    inside_right = field[:, 1, int(40 * sy), int((30 + 3 * 2.0) * sx)]
    inside_down = field[:, 0, int(20 * sy), int(120 * sx)]
    assert inside_right.tolist() == pytest.approx([2.0 * sx / SPEED_SCALE, 0.0])
    assert inside_down.tolist() == pytest.approx([0.0, 1.5 * sy / SPEED_SCALE])
    assert field[:, :, int(70 * sy), int(70 * sx)].abs().max() == 0


def test_the_motion_read_out_ignores_latent_frame_zero():
    """Latent frame 0 holds frame 0 alone (Mochi's causal autoencoder): it cannot know where a shape
    goes, so only later latent frames are asked for motion."""
    from types import SimpleNamespace

    from refam.shapes.video_autoencoder import MotionReadoutStage

    vae = SimpleNamespace(config=SimpleNamespace(latent_channels=4))
    stage = MotionReadoutStage.__new__(MotionReadoutStage)
    torch.nn.Module.__init__(stage)
    stage.colour_weight, stage.motion_weight = 0.0, 1.0
    stage.readout = torch.nn.Conv3d(4, 3, 1)
    stage.motion_readout = torch.nn.Conv3d(4, 2, 1)
    torch.nn.init.zeros_(stage.motion_readout.weight)
    torch.nn.init.zeros_(stage.motion_readout.bias)
    latents = SimpleNamespace(mode=lambda: torch.randn(1, 4, 3, 2, 2))
    pixels = torch.zeros(1, 3, 13, 16, 16)
    stage.velocity = torch.zeros(1, 2, 13, 16, 16)
    stage.velocity[:, :, 0] = 5.0  # frame 0 moves: nothing may be asked of latent frame 0
    assert stage.latent_terms(pixels, latents)["motion"].item() == 0
    stage.velocity[:, :, 7] = 6.0  # frame 7, in latent frame 2 (frames 7-12): a sixth of 6, 1, in its mean
    assert stage.latent_terms(pixels, latents)["motion"].item() == pytest.approx(0.5)  # 1 on half the cells read
