"""A PixArt-Sigma-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS (PixArtSigmaPipeline, PixArtTransformer2DModel,
T5EncoderModel, a T5 tokenizer, AutoencoderKL, DPMSolverMultistepScheduler); the word-level T5
vocabulary of `refam.testing.tiny_flux` stands in for t5-v1_1-xxl's, so the folder loads through
`PixArtSigmaPipeline.from_pretrained` offline.

Shapes kept from the real model: the T5 width (caption_channels, 24) differs from the transformer
width (32), so the per-token `caption_projection` cannot be skipped unseen; the transformer predicts
eps and a learned variance (out_channels twice the latent's 4); `ada_norm_single` blocks with an
image self-attention `attn1` and an image-to-text cross-attention `attn2` (no QK norms in PixArt, so
there are no norm scales to draw); a 2D sin-cos table on image tokens, none on text; the SDXL VAE's
4 latent channels and scaling factor with no shift factor; the checkpoint's VP schedule (linear
betas 1e-4..0.02, eps prediction) read by DPM-Solver++.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, save_pipeline_folder, tiny_t5

T5_WIDTH = 24  # caption_channels (4096 in PixArt-Sigma): not the transformer's width

# PixArt-alpha/PixArt-Sigma-XL-2-1024-MS scheduler/scheduler_config.json, its schedule and solver
# written out: a VP schedule (linear betas), eps prediction, DPM-Solver++
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon",
    algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
    timestep_spacing="linspace", steps_offset=0,
)


def build_tiny_pixart(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2):
    """A randomly initialised PixArtSigmaPipeline with the real component classes, deterministic by seed."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    _, tokenizer = build_tokenizers()
    width = heads * head_dim
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = tiny_t5(tokenizer, d_model=T5_WIDTH, feed_forward_proj="gated-gelu")
        transformer = PixArtTransformer2DModel(
            num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4, out_channels=8, num_layers=layers,
            cross_attention_dim=width, caption_channels=T5_WIDTH, sample_size=8, patch_size=2, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True, activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000, interpolation_scale=1, use_additional_conditions=False,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, scaling_factor=0.13025,
        )
    return PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler(**SCHEDULER_CONFIG))


def save_tiny_pixart(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_pixart(**kwargs), folder)
