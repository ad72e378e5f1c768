"""A Stable Diffusion 3.5-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as stabilityai/stable-diffusion-3.5-large and -medium (SD3Transformer2DModel, two
CLIPTextModelWithProjection, T5EncoderModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler with the
static shift 3.0); the offline vocabularies of `refam.testing.tiny_flux` stand in for the real ones,
so the folder loads through `StableDiffusion3Pipeline.from_pretrained` offline.

Shapes kept from the real models: the two CLIPs differ in width and their concatenation is narrower
than T5 (the pipeline zero-pads CLIP features up to T5's width, 2048 of 4096 in SD3.5), the second
CLIP pads with "!" as OpenCLIP bigG does, QK RMSNorm in every attention, and the three kinds of
MMDiT block: dual attention (MMDiT-X, SD3.5-medium's blocks 0-12: a second, image-only attention
`attn2`), plain joint attention, and the last block, `context_pre_only`. SD3 has no RoPE: image
tokens get a fixed 2D sin-cos table cropped from `pos_embed_max_size`, text tokens no position.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, save_pipeline_folder, tiny_t5

CLIP_WIDTHS = (8, 16)  # CLIP-L, CLIP-G stand-ins (768, 1280 in SD3.5): distinct, so a swap shows
T5_WIDTH = 32  # joint_attention_dim (4096 in SD3.5), wider than the CLIPs' 24 together


def _clip(tokenizer, width: int, activation: str):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, projection_dim=width, hidden_act=activation,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_sd3(
    seed: int = 0,
    heads: int = 2,
    head_dim: int = 16,
    layers: int = 3,
    dual_attention_layers: tuple[int, ...] = (0,),
    pos_embed_max_size: int = 16,
):
    """A randomly initialised StableDiffusion3Pipeline with the real component classes, deterministic
    by seed. The defaults give SD3.5-medium's three block kinds (block 0 dual attention, block 1
    plain, block 2 `context_pre_only`); `dual_attention_layers=()` gives SD3.5-large's structure."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    clip_l_tok, t5_tok = build_tokenizers()
    clip_g_tok = copy.deepcopy(clip_l_tok)
    clip_g_tok.pad_token = "!"  # stabilityai's tokenizer_2 pads with "!" (OpenCLIP's id 0), tokenizer with EOS
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip_l = _clip(clip_l_tok, CLIP_WIDTHS[0], "quick_gelu")
        clip_g = _clip(clip_g_tok, CLIP_WIDTHS[1], "gelu")
        t5 = tiny_t5(t5_tok, d_model=T5_WIDTH, feed_forward_proj="gated-gelu")  # T5 v1.1, as SD3.5's
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=T5_WIDTH,
            caption_projection_dim=heads * head_dim, pooled_projection_dim=sum(CLIP_WIDTHS),
            pos_embed_max_size=pos_embed_max_size, dual_attention_layers=tuple(dual_attention_layers),
            qk_norm="rms_norm",
        )
        # fresh RMSNorm scales are all ones: drawn at random so that a processor applying the image
        # stream's norm_k to text keys (or the reverse) gives a different answer
        for name, parameter in transformer.named_parameters():
            if ".norm_" in name and name.endswith(".weight"):
                parameter.data.normal_(1.0, 0.3)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            latent_channels=16, norm_num_groups=4, scaling_factor=1.5305, shift_factor=0.0609,
            use_quant_conv=False, use_post_quant_conv=False,
        )
    # stabilityai/stable-diffusion-3.5-large and -medium: a static shift, no dynamic shifting
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae,
        text_encoder=clip_l, tokenizer=clip_l_tok, text_encoder_2=clip_g, tokenizer_2=clip_g_tok,
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )


def save_tiny_sd3(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_sd3(**kwargs), folder)
