"""A Qwen-Image-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Qwen/Qwen-Image (QwenImageTransformer2DModel, Qwen2_5_VLForConditionalGeneration,
Qwen2Tokenizer, AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler with the checkpoint's
scheduler config); a byte-level BPE trained on the tiny vocabulary and the pipeline's prompt
template stands in for Qwen2.5-VL's, so the folder loads through `QwenImagePipeline.from_pretrained`
offline and `encode_prompt` drops exactly the template's system prefix (34 tokens, as with the real
tokenizer).

Shapes kept from the real model: the text encoder is wider than the transformer
(`joint_attention_dim` 3584 vs 24 x 128 = 3072), grouped-query attention in the text encoder (28
heads, 4 key/value heads), MSRoPE axes in the real proportions (16, 56, 56) of the head, 16 latent
channels packed 2x2, the VAE's 8x spatial compression with its causal 3D convolutions and the real
latent mean and std. Qwen-Image's RoPE frequencies are fixed (theta 10000), not weights, so a fresh
model already has a non-trivial RoPE. The QK norms' scales are drawn at random (fresh ones are all
1), so that a text-key norm swapped for the image one shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_tokenizers import build_qwen2_tokenizer

# Qwen/Qwen-Image scheduler/scheduler_config.json
QWEN_IMAGE_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    invert_sigmas=False, stochastic_sampling=False,
)


def qwenimage_prompt_template() -> tuple[str, int]:
    """The template QwenImagePipeline wraps every prompt in and how many of its tokens it drops, as the
    pipeline sets them (in `__init__`, hence read from an instance without components)."""
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=None)
    return pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx


def build_tiny_qwen2_5_vl(tokenizer, seed: int = 0, width: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    """A randomly initialised Qwen2_5_VLForConditionalGeneration over `tokenizer`'s vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    half_head = width // heads // 2  # mrope sections split half the head dim over (t, h, w), as [16, 24, 24] of 64
    sections = [half_head - 2 * (3 * half_head // 8), 3 * half_head // 8, 3 * half_head // 8]
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": sections},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width,
                           fullatt_block_indexes=[0]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_qwenimage(seed: int = 0, width: int = 32, heads: int = 2, layers: int = 2, text_width: int = 48):
    """A randomly initialised QwenImagePipeline with the real component classes, deterministic by seed."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    tokenizer = build_qwen2_tokenizer(qwenimage_prompt_template()[0])
    text_encoder = build_tiny_qwen2_5_vl(tokenizer, seed=seed + 1, width=text_width)
    head_dim = width // heads
    spatial = 2 * (7 * head_dim // 32)  # (16, 56, 56) of 128: 1/8 frames, 7/16 rows, 7/16 columns
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2, in_channels=64, out_channels=16, num_layers=layers, attention_head_dim=head_dim,
            num_attention_heads=heads, joint_attention_dim=text_width, guidance_embeds=False,
            axes_dims_rope=(head_dim - 2 * spatial, spatial, spatial),
        )
        randomize_qk_norms(transformer, seed + 2)
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )


def save_tiny_qwenimage(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_qwenimage(**kwargs), folder)
