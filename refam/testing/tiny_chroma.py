"""A Chroma-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as lodestones/Chroma1-HD (ChromaPipeline, ChromaTransformer2DModel, T5EncoderModel, a T5
tokenizer, FLUX.1's AutoencoderKL, FlowMatchEulerDiscreteScheduler with FLUX's dynamic shift); the
word-level T5 vocabulary of `refam.testing.tiny_flux` stands in for t5-v1_1-xxl's, so the folder
loads through `ChromaPipeline.from_pretrained` offline.

Shapes kept from the real model: no CLIP (Chroma's modulation comes from its approximator of the
timestep alone); the T5 width (joint_attention_dim, 24) differs from the transformer width (32), so
the per-token `context_embedder` cannot be skipped unseen; double blocks then single blocks with QK
RMSNorms, their scales drawn at random (fresh ones are 1, so a text key normed by the image stream's
norm would pass); FLUX's 3-axis RoPE over (0, row, column) ids with text at id 0; the VAE's 16
channels, 2 x 2 cells per token, and FLUX's scaling and shift factors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, flux_scheduler, randomize_qk_norms, save_pipeline_folder, tiny_flux_vae, tiny_t5

T5_WIDTH = 24  # joint_attention_dim (4096 in Chroma): not the transformer's width


def build_tiny_chroma(seed: int = 0, width: int = 32, heads: int = 2, double_blocks: int = 2, single_blocks: int = 2):
    """A randomly initialised ChromaPipeline with the real component classes, deterministic by seed."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel

    _, tokenizer = build_tokenizers()
    head_dim = width // heads
    rope = (head_dim - 2 * (head_dim * 3 // 8), head_dim * 3 // 8, head_dim * 3 // 8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = tiny_t5(tokenizer, d_model=T5_WIDTH, feed_forward_proj="gated-gelu")
        transformer = ChromaTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=double_blocks, num_single_layers=single_blocks,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=T5_WIDTH, axes_dims_rope=rope,
            approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
        )
        randomize_qk_norms(transformer, seed + 1)
        vae = tiny_flux_vae()
    # FLUX.1-dev's scheduler config, which Chroma's is assumed to be (see configs/backbones/chroma.yaml)
    return ChromaPipeline(scheduler=flux_scheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)


def save_tiny_chroma(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_chroma(**kwargs), folder)
