"""A Mochi-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as genmo/mochi-1-preview (MochiTransformer3DModel, AutoencoderKLMochi, T5EncoderModel,
FlowMatchEulerDiscreteScheduler with `invert_sigmas=True`); the word-level T5 vocabulary of
`refam.testing.tiny_flux` stands in for T5-XXL's, so the folder loads through
`MochiPipeline.from_pretrained` offline.

Shapes kept from the real model: the text stream is narrower than the visual stream
(`pooled_projection_dim` != heads x head_dim, as 1536 vs 3072), the VAE compresses 8x in space and
6x in time with the real (1, 2, 3) temporal expansions, causal convolutions and causal attention,
and the last block is `context_pre_only`. A freshly built MochiTransformer3DModel has all-zero RoPE
frequencies (the identity rotation); here they are drawn at random so that tests see a real RoPE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, save_pipeline_folder, tiny_t5


def build_tiny_mochi(
    seed: int = 0,
    heads: int = 2,
    head_dim: int = 16,
    text_width: int = 24,
    layers: int = 3,
    force_zeros_for_empty_prompt: bool = False,
):
    """A randomly initialised MochiPipeline with the real component classes, deterministic by seed."""
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    _, t5_tok = build_tokenizers()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        t5 = tiny_t5(t5_tok)
        transformer = MochiTransformer3DModel(
            patch_size=2, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=layers,
            pooled_projection_dim=text_width, in_channels=12, text_embed_dim=32, time_embed_dim=32,
            max_sequence_length=256,
        )
        transformer.pos_frequencies.data.normal_(0.0, 0.5)
        vae = AutoencoderKLMochi(
            in_channels=15, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32), latent_channels=12, layers_per_block=(1, 1, 1, 1, 1),
            temporal_expansions=(1, 2, 3), spatial_expansions=(2, 2, 2),
            add_attention_block=(False, True, True, True, True), scaling_factor=1.0,
        )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, invert_sigmas=True)
    return MochiPipeline(
        scheduler=scheduler, vae=vae, text_encoder=t5, tokenizer=t5_tok, transformer=transformer,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
    )


def save_tiny_mochi(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_mochi(**kwargs), folder)
