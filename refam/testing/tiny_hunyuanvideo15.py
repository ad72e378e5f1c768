"""A HunyuanVideo 1.5-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v (HunyuanVideo15Transformer3DModel,
AutoencoderKLHunyuanVideo15, Qwen2_5_VLTextModel with a Qwen2Tokenizer, ByT5 (T5EncoderModel and
ByT5Tokenizer) for quoted glyph text, FlowMatchEulerDiscreteScheduler with the checkpoint's static
shift 5, ClassifierFreeGuidance); a byte-level BPE trained on the tiny vocabulary and the pipeline's
system message stands in for Qwen2.5's, so the folder loads through
`HunyuanVideo15Pipeline.from_pretrained` offline and `encode_prompt`'s crop of 108 tokens drops
exactly the chat template's prefix, as with the real tokenizer.

Shapes kept from the real model: the Qwen text is wider than the transformer (3584 vs 16 x 128 =
2048) and ByT5 narrower (1472), the token refiner (`context_embedder`) mixes the caption's tokens
before the blocks, every block is dual-stream with RoPE on video tokens only (axes in the real
proportions (16, 56, 56) of the head), patch size 1 over a VAE of 16x spatial and 4x temporal
compression, and t2v's input is [latent | zero condition | zero mask] (2 C + 1 channels). The QK
norms' scales are drawn at random (fresh ones are all 1), so that a text-key norm swapped for the
video one shows.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_tokenizers import build_qwen2_tokenizer

# Qwen2.5-VL's chat template for text-only messages: what HunyuanVideo15Pipeline renders a prompt with
QWEN2_5_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def hunyuanvideo15_system_message() -> str:
    from diffusers import HunyuanVideo15Pipeline

    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def build_hunyuanvideo15_tokenizer():
    """Qwen2.5's tokenizer as `build_qwen2_tokenizer` makes it, with the chat template and the pipeline's
    system message each word one token (its prefix is then 108 tokens, the pipeline's crop)."""
    rendered = f"<|im_start|>system\n{hunyuanvideo15_system_message()}<|im_end|>\n<|im_start|>user\n{{}}<|im_end|>\n"
    tokenizer = build_qwen2_tokenizer(rendered + "<|im_start|>assistant\n")
    tokenizer.chat_template = QWEN2_5_CHAT_TEMPLATE
    return tokenizer


def _qwen_text_model(tokenizer, width: int, layers: int):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    half_head = width // 4 // 2
    sections = [half_head - 2 * (3 * half_head // 8), 3 * half_head // 8, 3 * half_head // 8]
    return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": sections},
        pad_token_id=tokenizer.pad_token_id,
    )).eval()


def build_tiny_byt5(tokenizer, width: int):
    """A one-layer T5 encoder over ByT5's byte vocabulary: the Hunyuan pipelines' glyph encoder (real: 1472 wide)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=48, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))


def build_tiny_hunyuanvideo15(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2, text_width: int = 48,
                              glyph_width: int = 24, latent_channels: int = 4, text_layers: int = 4):
    """A randomly initialised HunyuanVideo15Pipeline with the real component classes, deterministic by seed."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)
    from transformers import ByT5Tokenizer

    tokenizer, tokenizer_2 = build_hunyuanvideo15_tokenizer(), ByT5Tokenizer()
    spatial = 2 * (7 * head_dim // 32)  # (16, 56, 56) of 128
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = _qwen_text_model(tokenizer, text_width, text_layers)
        text_encoder_2 = build_tiny_byt5(tokenizer_2, glyph_width)
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * latent_channels + 1, out_channels=latent_channels, num_attention_heads=heads,
            attention_head_dim=head_dim, num_layers=layers, num_refiner_layers=2, mlp_ratio=2.0, patch_size=1,
            patch_size_t=1, text_embed_dim=text_width, text_embed_2_dim=glyph_width, image_embed_dim=16,
            rope_axes_dim=(head_dim - 2 * spatial, spatial, spatial), target_size=640, task_type="t2v",
        )
        randomize_qk_norms(transformer, seed + 2)
        vae = AutoencoderKLHunyuanVideo15(latent_channels=latent_channels, block_out_channels=(8, 16, 16, 16, 16),
                                          layers_per_block=1)
    return HunyuanVideo15Pipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, guider=ClassifierFreeGuidance(guidance_scale=6.0),
    )


def save_tiny_hunyuanvideo15(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_hunyuanvideo15(**kwargs), folder)
