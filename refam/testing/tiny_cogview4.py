"""A CogView4-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as THUDM/CogView4-6B (CogView4Transformer2DModel, GlmModel, a tokenizers-backed GLM-4 tokenizer,
AutoencoderKL, FlowMatchEulerDiscreteScheduler with CogView4's dynamic "linear" time shift); a byte-level BPE
trained on the tiny vocabulary, with GLM-4's "[gMASK]<sop>" prefix, stands in for GLM-4's tokenizer
(`build_glm4_tokenizer`), so the folder loads through `CogView4Pipeline.from_pretrained` offline.

Shapes kept from the real model: GLM is wider than the transformer (4096 vs 64 x 40 = 2560, here 48 vs 32) and
grouped-query; every block projects text and image tokens with one set of projections and a QK LayerNorm
without affine scales (so there are no norm scales to draw), RoPE on image tokens only; the VAE has FLUX's
16-channel latent (x8; `build_flux_vae`), whose `shift_factor` the control pipeline ignores (so a latent
shifted by it shows). GLM has four layers, so that its hidden layer -2 is neither the last nor the embeddings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import save_pipeline_folder
from refam.testing.tiny_tokenizers import build_glm4_tokenizer
from refam.testing.tiny_zimage import build_flux_vae

# THUDM/CogView4-6B's scheduler config, as diffusers' own CogView4 tests build it (the hub file was not read)
COGVIEW4_SCHEDULER = dict(base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True,
                          time_shift_type="linear")


def build_tiny_cogview4(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2, text_width: int = 48,
                        text_layers: int = 4):
    """A randomly initialised CogView4Pipeline with the real component classes, deterministic by seed."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    tokenizer = build_glm4_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = GlmModel(GlmConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
            num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=text_width // 4,
            max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
        )).eval()
        transformer = CogView4Transformer2DModel(
            patch_size=2, in_channels=16, out_channels=16, num_layers=layers, attention_head_dim=head_dim,
            num_attention_heads=heads, text_embed_dim=text_width, time_embed_dim=16, condition_dim=8,
        )
        vae = build_flux_vae()
    return CogView4Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(**COGVIEW4_SCHEDULER))


def save_tiny_cogview4(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_cogview4(**kwargs), folder)
