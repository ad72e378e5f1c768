"""The tiny CogVideoX pipeline is the real one in small: it loads from its folder offline, the stock
pipeline encodes a prompt with it, and the stock transformer runs on a non-square token grid with
the model's own positions (RoPE for 5b and 1.5, additive sin-cos for 2b)."""

import pytest
import torch
from diffusers import CogVideoXPipeline
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from refam.testing.tiny_cogvideox import VARIANTS, build_tiny_cogvideox, save_tiny_cogvideox

HEIGHT, WIDTH = 48, 80  # 6 x 10 latents: a 3 x 5 token grid, off the 4 x 6 base grid



@pytest.fixture(scope="module", params=VARIANTS)
def loaded(request, tmp_path_factory):
    folder = save_tiny_cogvideox(tmp_path_factory.mktemp("tiny-cogvideox") / request.param, variant=request.param)
    return request.param, CogVideoXPipeline.from_pretrained(folder, local_files_only=True)


def _forward(pipe, text, latent_frames=1, rope=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, latent_frames, 16, HEIGHT // 8, WIDTH // 8, generator=generator)
    if rope is None and pipe.transformer.config.use_rotary_positional_embeddings:
        rope = pipe._prepare_rotary_positional_embeddings(HEIGHT, WIDTH, latent_frames, "cpu")
    with torch.inference_mode():
        return pipe.transformer(latents, text, timestep=torch.tensor([500]), image_rotary_emb=rope, return_dict=False)[0]


def test_the_folder_loads_as_the_real_classes_with_the_real_scheduler(loaded):
    variant, pipe = loaded
    assert type(pipe.transformer).__name__ == "CogVideoXTransformer3DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKLCogVideoX"
    assert type(pipe.scheduler).__name__ == "CogVideoXDDIMScheduler"
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.alphas_cumprod[-1] == 0  # zero terminal SNR: timestep 999 is pure noise
    assert pipe.scheduler.config.snr_shift_scale == (3.0 if variant == "2b" else 1.0)
    assert pipe.transformer.config.use_rotary_positional_embeddings == (variant != "2b")
    assert (pipe.transformer.config.patch_size_t == 2) == (variant == "1.5")


def test_the_same_seed_builds_the_same_weights():
    a, b, c = build_tiny_cogvideox(seed=0), build_tiny_cogvideox(seed=0), build_tiny_cogvideox(seed=1)
    wa, wb, wc = (p.transformer.proj_out.weight for p in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_the_stock_pipeline_encodes_a_prompt_padded_to_226_tokens(loaded):
    _, pipe = loaded
    embeds, negative = pipe.encode_prompt(["the red dog on the left", ""], do_classifier_free_guidance=False, device="cpu")
    assert negative is None
    assert embeds.shape == (2, 226, pipe.text_encoder.config.d_model) != (2, 226, pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim)
    assert not torch.allclose(embeds[0], embeds[1])


def test_the_stock_transformer_runs_on_a_non_square_grid(loaded):
    variant, pipe = loaded
    frames = 2 if variant == "1.5" else 1  # 1.5 patches 2 latent frames together
    text, _ = pipe.encode_prompt("a man", do_classifier_free_guidance=False, device="cpu")
    out = _forward(pipe, text, frames)
    assert out.shape == (1, frames, 16, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", ["5b", "1.5"])
def test_rope_is_real_and_positions_the_video(variant):
    pipe = build_tiny_cogvideox(variant=variant)
    frames = 2 if variant == "1.5" else 1
    text, _ = pipe.encode_prompt("a man", do_classifier_free_guidance=False, device="cpu")
    cos, sin = pipe._prepare_rotary_positional_embeddings(HEIGHT, WIDTH, frames, "cpu")
    assert cos.shape == (3 * 5 * (1 if variant == "1.5" else frames), 16)
    identity = (torch.ones_like(cos), torch.zeros_like(sin))
    assert not torch.allclose(_forward(pipe, text, frames), _forward(pipe, text, frames, rope=identity), atol=1e-4)


def test_5b_rope_fits_an_off_base_grid_into_the_base_grid():
    """5b's rows and columns are not token indices: a 3 x 5 grid is stretched over the 4 x 6 base
    grid (sample_height x sample_width / patch), so row 1 sits at 4/3, not 1."""
    pipe = build_tiny_cogvideox(variant="5b")
    crops = get_resize_crop_region_for_grid((3, 5), 6, 4)
    assert crops == ((0, 0), (4, 6))
    cos, _ = get_3d_rotary_pos_embed(16, crops, (3, 5), 1)
    stretched, _ = pipe._prepare_rotary_positional_embeddings(HEIGHT, WIDTH, 1, "cpu")
    integer, _ = get_3d_rotary_pos_embed(16, ((0, 0), (3, 5)), (3, 5), 1)
    assert torch.allclose(stretched, cos) and not torch.allclose(stretched, integer)


def test_2b_text_length_is_fixed_by_its_additive_positions():
    """2b adds a [226 text (zeros) + video] sin-cos table at the patch embedding: a text sequence
    of any other length does not fit (the expression branch cannot simply append tokens)."""
    pipe = build_tiny_cogvideox(variant="2b")
    text, _ = pipe.encode_prompt("a man", do_classifier_free_guidance=False, device="cpu")
    _forward(pipe, text)
    with pytest.raises(RuntimeError, match="must match"):
        _forward(pipe, torch.cat([text, text[:, :4]], dim=1))


def test_the_vae_compresses_4k_plus_1_frames_into_k_plus_1_latents():
    vae = build_tiny_cogvideox().vae
    with torch.inference_mode():
        for frames, latents in ((1, 1), (5, 2), (9, 3)):
            video = torch.rand(1, 3, frames, 32, 32) * 2 - 1
            assert vae.encode(video).latent_dist.mode().shape == (1, 16, latents, 4, 4)
