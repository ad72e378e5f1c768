"""A CogVideoX-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as THUDM/CogVideoX-2b, -5b and CogVideoX1.5-5B (CogVideoXTransformer3DModel,
AutoencoderKLCogVideoX, T5EncoderModel, CogVideoXDDIMScheduler); the word-level T5 vocabulary of
`refam.testing.tiny_flux` stands in for T5-XXL's, so the folder loads through
`CogVideoXPipeline.from_pretrained` offline.

`variant` picks which real checkpoint the tiny one mirrors, because they differ where the branch
cares (as diffusers' models/embeddings.py `CogVideoXPatchEmbed` and
pipelines/cogvideo/pipeline_cogvideox.py `_prepare_rotary_positional_embeddings` read each
checkpoint's transformer/config.json):

- "2b": absolute 3D sin-cos positions added at the patch embedding, zeros for the text tokens, so
  the text sequence must be exactly `max_text_seq_length` long; scheduler `snr_shift_scale` 3.0,
  VAE `scaling_factor` 1.15258426;
- "5b": no additive positions; 3D RoPE (computed by the pipeline, not the model) on the video
  tokens only, on a grid resized into the `sample_height` x `sample_width` base grid;
  `snr_shift_scale` 1.0, VAE `scaling_factor` 0.7;
- "1.5": as "5b", plus temporal patches of 2 latent frames (`patch_size_t`), no patch bias, and
  RoPE on integer positions ("slice" grid).

The RoPE is a fixed function of the grid (no weights), so a tiny model sees a real one. The VAE
compresses 8x in space and 4x in time (causally: 4k + 1 frames give k + 1 latent frames), as the
real one. The QK norms' scales and shifts are drawn at random (fresh ones are 1 and 0).
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, randomize_qk_norms, save_pipeline_folder, tiny_t5

VARIANTS = ("2b", "5b", "1.5")
# the real checkpoints' scheduler/scheduler_config.json and vae/config.json, as diffusers'
# scripts/convert_cogvideox_to_diffusers.py writes them ("For CogVideoX-2B, snr_shift_scale is 3.0.
# For 5B, it is 1.0"; scaling_factor 1.15258426 and 0.7); CogVideoX1.5-5B's taken as 5b's
SNR_SHIFT_SCALE = {"2b": 3.0, "5b": 1.0, "1.5": 1.0}
VAE_SCALING_FACTOR = {"2b": 1.15258426, "5b": 0.7, "1.5": 0.7}
# T5's width, not the transformer's (heads x head_dim, 32 by default), as T5-XXL's 4096 is not 5b's
# 3072: an expression that skips `text_proj` cannot pass
TEXT_WIDTH = 24


def build_tiny_cogvideox(
    seed: int = 0,
    variant: str = "5b",
    heads: int = 2,
    head_dim: int = 16,
    layers: int = 2,
    latent_height: int = 8,
    latent_width: int = 12,
    max_text_seq_length: int = 226,
):
    """A randomly initialised CogVideoXPipeline with the real component classes, deterministic by seed.

    `latent_height` x `latent_width` is the transformer's `sample_height` x `sample_width` (the
    base grid RoPE positions are fitted into; 60 x 90 in the real 1.0 models): the default gives
    a 4 x 6 token grid at 64 x 96 pixels. `max_text_seq_length` is the caption length the pipeline
    pads to (226, as the real pipeline's `max_sequence_length`)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    _, t5_tok = build_tokenizers()
    t5_tok.model_max_length = max_text_seq_length
    temporal_patch = {"patch_size_t": 2, "patch_bias": False} if variant == "1.5" else {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t5 = tiny_t5(t5_tok, d_model=TEXT_WIDTH)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16, out_channels=16,
            time_embed_dim=32, text_embed_dim=TEXT_WIDTH, num_layers=layers, sample_height=latent_height,
            sample_width=latent_width, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
            max_text_seq_length=max_text_seq_length, use_rotary_positional_embeddings=variant != "2b",
            **temporal_patch,
        )
        randomize_qk_norms(transformer, seed + 1)
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8), latent_channels=16, layers_per_block=1, norm_num_groups=4,
            temporal_compression_ratio=4, scaling_factor=VAE_SCALING_FACTOR[variant],
        )
    scheduler = CogVideoXDDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
        timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=SNR_SHIFT_SCALE[variant],
    )
    return CogVideoXPipeline(tokenizer=t5_tok, text_encoder=t5, vae=vae, transformer=transformer, scheduler=scheduler)


def save_tiny_cogvideox(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_cogvideox(**kwargs), folder)
