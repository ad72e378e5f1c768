"""A HunyuanImage-2.1-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as hunyuanvideo-community/HunyuanImage-2.1-Diffusers (HunyuanImageTransformer2DModel,
AutoencoderKLHunyuanImage, Qwen2_5_VLForConditionalGeneration with a Qwen2Tokenizer, ByT5 (T5EncoderModel and
ByT5Tokenizer) for quoted glyph text, FlowMatchEulerDiscreteScheduler); a byte-level BPE trained on the tiny
vocabulary and the pipeline's prompt template stands in for Qwen2.5's, so the folder loads through
`HunyuanImagePipeline.from_pretrained` offline and `encode_prompt`'s crop of 34 tokens drops exactly the
template's system prefix, as with the real tokenizer. No guider is saved (the pipeline's guiders are optional;
refam runs the conditional forward only).

Shapes kept from the real model: the Qwen text is wider than the transformer (3584 vs 28 x 128, here 48 vs 32)
and ByT5 narrower (1472); the token refiner (`context_embedder`) mixes the caption's tokens before the blocks;
dual-stream blocks, then single-stream ones (one set of projections for image and text), RoPE on image tokens
only, two equal axes; patch size 1 over a VAE of 32x spatial compression (64 latent channels, here 8). Qwen has
four layers, so that its hidden layer -3 is not the token embeddings and a reader one layer off shows. The QK
norms' scales are drawn at random (fresh ones are all 1), so that a text-key norm swapped for the image one shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_hunyuanvideo15 import build_tiny_byt5
from refam.testing.tiny_qwenimage import build_tiny_qwen2_5_vl
from refam.testing.tiny_tokenizers import build_qwen2_tokenizer

# HunyuanImagePipeline.__init__'s prompt template (its first 34 tokens are dropped), and the real scheduler's
# static shift (5: the shift the HunyuanImage-2.1 repository samples the base model with; the hub config was not read)
HUNYUANIMAGE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>"
)
HUNYUANIMAGE_SHIFT = 5.0


def build_tiny_hunyuanimage(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2, single_layers: int = 2,
                            text_width: int = 48, glyph_width: int = 24, latent_channels: int = 8, text_layers: int = 4):
    """A randomly initialised HunyuanImagePipeline with the real component classes, deterministic by seed."""
    from diffusers import (AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler, HunyuanImagePipeline,
                           HunyuanImageTransformer2DModel)
    from transformers import ByT5Tokenizer

    tokenizer, tokenizer_2 = build_qwen2_tokenizer(HUNYUANIMAGE_TEMPLATE), ByT5Tokenizer()
    text_encoder = build_tiny_qwen2_5_vl(tokenizer, seed=seed + 1, width=text_width, layers=text_layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder_2 = build_tiny_byt5(tokenizer_2, glyph_width)
        transformer = HunyuanImageTransformer2DModel(
            in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=heads,
            attention_head_dim=head_dim, num_layers=layers, num_single_layers=single_layers, num_refiner_layers=2,
            mlp_ratio=2.0, patch_size=(1, 1), text_embed_dim=text_width, text_embed_2_dim=glyph_width,
            rope_axes_dim=(head_dim // 2, head_dim // 2),
        )
        randomize_qk_norms(transformer, seed + 2)
        vae = AutoencoderKLHunyuanImage(
            in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(32,) * 6,
            layers_per_block=1, spatial_compression_ratio=32, sample_size=256, scaling_factor=0.75289,
        )
    return HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=HUNYUANIMAGE_SHIFT), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        transformer=transformer, guider=None, ocr_guider=None,
    )


def save_tiny_hunyuanimage(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_hunyuanimage(**kwargs), folder)
