"""The tiny Wan pipeline (refam.testing.tiny_wan) is a real WanPipeline: it loads offline from its
folder, the stock prompt encoding and transformer run on it, and it keeps the real model's
conventions (flow-sigma velocity scheduler with shift 3, 8x / 4x causal VAE, 3-axis RoPE)."""

import pytest
import torch

from refam.testing.tiny_wan import build_tiny_wan, save_tiny_wan

FRAMES, ROWS, COLS = 2, 4, 6  # a non-square token grid: latent [16, 2, 8, 12]



@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from diffusers import WanPipeline

    folder = save_tiny_wan(tmp_path_factory.mktemp("tiny-wan") / "wan")
    return WanPipeline.from_pretrained(folder, local_files_only=True)


def _caption(pipe, text: str, length: int = 16) -> torch.Tensor:
    with torch.inference_mode():
        embeds, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=length, device="cpu")
    return embeds


def _velocity(transformer, latent, embeds, timestep=750.0):
    with torch.inference_mode():
        return transformer(
            hidden_states=latent, timestep=torch.tensor([timestep]), encoder_hidden_states=embeds, return_dict=False
        )[0]


def test_the_folder_loads_as_the_real_component_classes(pipe):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5EncoderModel

    assert isinstance(pipe.transformer, WanTransformer3DModel)
    assert isinstance(pipe.vae, AutoencoderKLWan)
    assert isinstance(pipe.text_encoder, UMT5EncoderModel)
    assert isinstance(pipe.scheduler, UniPCMultistepScheduler)
    assert pipe.transformer_2 is None and pipe.config.boundary_ratio is None
    config = pipe.scheduler.config
    assert (config.prediction_type, config.use_flow_sigmas, config.flow_shift) == ("flow_prediction", True, 3.0)
    assert (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial) == (4, 8)
    assert tuple(pipe.transformer.config.patch_size) == (1, 2, 2)


def test_the_scheduler_tells_the_transformer_1000_sigma():
    """Flow sigmas with static shift 3: sigma = 3 s / (1 + 2 s) on s = linspace(1, 1/1000); the
    pipeline tells the transformer UniPC's int64 timestep, 1000 sigma rounded down."""
    scheduler = build_tiny_wan().scheduler
    scheduler.set_timesteps(4)
    sigmas = scheduler.sigmas[:-1].double()
    gap = 1000 * sigmas - scheduler.timesteps.double()
    assert scheduler.timesteps.dtype == torch.int64 and (gap >= 0).all() and (gap < 1).all()
    s = torch.linspace(1, 1 / 1000, 5, dtype=torch.float64)[:-1]
    torch.testing.assert_close(sigmas[1:], (3 * s / (1 + 2 * s))[1:], atol=1e-6, rtol=0)


def test_encode_prompt_pads_the_caption_with_zero_vectors(pipe):
    """Wan cuts the UMT5 states after the real tokens (words + EOS) and pads with zeros, unmasked."""
    embeds = _caption(pipe, "the red dog on the left")
    assert embeds.shape == (1, 16, pipe.text_encoder.config.d_model)
    real = len(pipe.tokenizer("the red dog on the left")["input_ids"])
    assert real == 7  # six words and EOS
    assert embeds[0, :real].abs().amax(dim=-1).min() > 0
    assert embeds[0, real:].abs().max() == 0


def test_one_stock_forward_on_a_non_square_grid(pipe):
    latent = torch.randn(1, 16, FRAMES, 2 * ROWS, 2 * COLS, generator=torch.Generator().manual_seed(0))
    embeds = _caption(pipe, "the red dog on the left")
    velocity = _velocity(pipe.transformer, latent, embeds)
    assert velocity.shape == latent.shape and torch.isfinite(velocity).all()
    # the caption reaches the video through cross-attention, the timestep through the modulation
    assert not torch.allclose(velocity, _velocity(pipe.transformer, latent, _caption(pipe, "a man")))
    assert not torch.allclose(velocity, _velocity(pipe.transformer, latent, embeds, timestep=250.0))


def test_rope_rotates_frames_rows_and_columns_apart(pipe):
    """Wan's fixed RoPE is non-trivial: tokens in the frame-major order (frame, row, column) differ
    along every axis, and the frequencies split the head 4 / 4 / 4."""
    cos, sin = pipe.transformer.rope(torch.zeros(1, 16, FRAMES, 2 * ROWS, 2 * COLS))
    cos = cos.reshape(FRAMES, ROWS, COLS, -1)
    t, h, w = pipe.transformer.rope.t_dim, pipe.transformer.rope.h_dim, pipe.transformer.rope.w_dim
    assert (t, h, w) == (4, 4, 4)
    assert not torch.allclose(cos[0, 0, 0, :t], cos[1, 0, 0, :t])  # the frame axis
    assert not torch.allclose(cos[0, 0, 0, t : t + h], cos[0, 1, 0, t : t + h])  # rows
    assert not torch.allclose(cos[0, 0, 0, t + h :], cos[0, 0, 1, t + h :])  # columns
    torch.testing.assert_close(cos[1, 2, 3, t + h :], cos[0, 0, 3, t + h :])  # a column's angle is the column's alone


def test_the_vae_compresses_4k_plus_1_frames_to_k_plus_1_latents(pipe):
    video = torch.rand(1, 3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        latent = pipe.vae.encode(video).latent_dist.mode()
    assert latent.shape == (1, 16, 3, 4, 6)


def test_builds_are_deterministic_by_seed():
    first, again, other = (build_tiny_wan(seed=s).transformer.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_wan22_style_folder_has_two_experts(tmp_path):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(save_tiny_wan(tmp_path / "wan22", boundary_ratio=0.875), local_files_only=True)
    assert pipe.config.boundary_ratio == 0.875
    high, low = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert not all(torch.equal(high[k], low[k]) for k in high)
