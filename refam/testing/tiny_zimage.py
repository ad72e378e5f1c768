"""A Z-Image-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Tongyi-MAI/Z-Image-Turbo (ZImageTransformer2DModel, Qwen3Model, Qwen2Tokenizer with Qwen3's
chat template, AutoencoderKL with FLUX's 16 latent channels, scaling and shift factors,
FlowMatchEulerDiscreteScheduler). Shapes kept from the real model: the text encoder's width differs from the
transformer's (`cap_feat_dim` 2560 vs `dim` 3840: here 24 vs 32), two context-refiner and two noise-refiner
blocks, RoPE axes in the real proportions (32, 48, 48) of the head. Every QK-norm scale and both padding
tokens (zeros in a fresh model) are drawn at random, so that a text-key norm, a refiner pass or a padding
row taken wrongly shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_flux2 import build_qwen3_tokenizer


def build_flux_vae():
    """A tiny AutoencoderKL with FLUX's latent layout (16 channels, x8, scaling 0.3611, shift 0.1159), as
    Z-Image and Lumina 2 ship it."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=16, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def randomize_pad_tokens(transformer: torch.nn.Module, seed: int) -> None:
    """Draw every `*pad_token` parameter at random (a fresh model's are zeros)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if name.endswith("pad_token"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def build_tiny_zimage(seed: int = 0, width: int = 32, heads: int = 2, layers: int = 2, text_width: int = 24):
    """A randomly initialised ZImagePipeline with the real component classes, deterministic by seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = build_qwen3_tokenizer()
    head_dim = width // heads
    spatial = 3 * head_dim // 8  # (32, 48, 48) of 128
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, head_dim=text_width // 2, max_position_embeddings=1024,
            rope_theta=1e6, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        )).eval()
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=width, n_layers=layers, n_refiner_layers=2,
            n_heads=heads, n_kv_heads=heads, qk_norm=True, cap_feat_dim=text_width, rope_theta=256.0,
            axes_dims=[head_dim - 2 * spatial, spatial, spatial], axes_lens=[512, 64, 64],
        )
        randomize_qk_norms(transformer, seed + 2)
        randomize_pad_tokens(transformer, seed + 3)
        vae = build_flux_vae()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)


def save_tiny_zimage(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_zimage(**kwargs), folder)
