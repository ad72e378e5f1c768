"""A Wan-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Wan-AI/Wan2.1-T2V-1.3B-Diffusers (WanPipeline, WanTransformer3DModel,
AutoencoderKLWan, UMT5EncoderModel, a T5 tokenizer, UniPCMultistepScheduler with flow sigmas); the
word-level T5 vocabulary of `refam.testing.tiny_flux` stands in for umt5-xxl's, so the folder loads
through `WanPipeline.from_pretrained` offline.

Shapes kept from the real model: the UMT5 width (text_dim, 20) differs from the transformer width (24), the
patch is (1, 2, 2), the VAE compresses 8x in space and 4x in time with the real causal layout
(`temperal_downsample` (False, True, True)) and the real 16 latent channels with the checkpoint's
per-channel latents_mean / latents_std, the transformer normalises q and k over all heads
("rms_norm_across_heads") and the image tokens before cross-attention (`cross_attn_norm`). Wan's
RoPE is not learned (fixed 3-axis frequencies, theta 10000), so a fresh model already has a
non-trivial one. The QK norms' scales are drawn at random (fresh ones are all 1), so that a
caption-key norm swapped for the image one shows. `boundary_ratio` adds a second transformer, as Wan 2.2 A14B's two experts
(`transformer` for high noise, `transformer_2` for low noise).
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, randomize_qk_norms, save_pipeline_folder

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (the settings that differ from
# UniPCMultistepScheduler's defaults): velocity targets on flow sigmas, static shift 3
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
)


def _tiny_transformer(heads: int, head_dim: int, layers: int, text_width: int):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=text_width, freq_dim=32, ffn_dim=2 * heads * head_dim, num_layers=layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    )


def build_tiny_wan(
    seed: int = 0,
    heads: int = 2,
    head_dim: int = 12,
    layers: int = 2,
    boundary_ratio: float | None = None,
):
    """A randomly initialised WanPipeline with the real component classes, deterministic by seed.

    head_dim 12 splits RoPE's channels 4 / 4 / 4 over (frame, row, column), as Wan's 128 splits
    44 / 42 / 42. With `boundary_ratio` (Wan 2.2 A14B: 0.875) a second, differently drawn
    transformer is added as `transformer_2`, the low-noise expert."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    _, tokenizer = build_tokenizers()
    text_width = 20  # not the transformer's width: an expression that skips `text_embedder` cannot pass
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = UMT5EncoderModel(
            UMT5Config(
                vocab_size=len(tokenizer), d_model=text_width, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        )
        transformer = _tiny_transformer(heads, head_dim, layers, text_width)
        transformer_2 = _tiny_transformer(heads, head_dim, layers, text_width) if boundary_ratio is not None else None
        for index, expert in enumerate(t for t in (transformer, transformer_2) if t is not None):
            randomize_qk_norms(expert, seed + 1 + index)
        vae = AutoencoderKLWan(
            base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
            temperal_downsample=[False, True, True],
        )
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG),
        transformer=transformer, transformer_2=transformer_2, boundary_ratio=boundary_ratio,
    )


def save_tiny_wan(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_wan(**kwargs), folder)
