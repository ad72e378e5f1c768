"""A Qwen-Image 2.1-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Qwen/Qwen-Image-2.1 (QwenImage21Transformer2DModel, Qwen3VLForConditionalGeneration read
through a Qwen3VLProcessor, AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler); a byte-level BPE
trained on the tiny vocabulary and the pipeline's prompt template stands in for Qwen3-VL's (the same
special tokens as Qwen2.5-VL's, `refam.testing.tiny_tokenizers`), and a chat template reduced to the
system turn the pipeline renders to count the system tokens it drops.

Shapes kept from the real model: the text encoder's width differs from the transformer's (`context_in_dim`
4096 vs 32 x 128: here 48 vs 64), the transformer consumes 64 latent channels unpatched (a 16x VAE, so one
token per 16 px), RoPE axes in the real proportions (16, 56, 56) of the head, the VAE's four input channels
(RGBA) and its real latent mean and std. Every QK-norm scale and the text projection's RMSNorm scale
(zero-centred: a fresh model's is exactly 1) are drawn at random, so that a text-key norm swapped for
another, or a text row that skips the projection's norm, shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_qwenimage import QWEN_IMAGE_SCHEDULER
from refam.testing.tiny_tokenizers import build_qwen2_tokenizer

# Qwen3-VL's chat template, reduced to what QwenImage21Pipeline renders with it: turns whose content is a
# string or a list of text blocks ("<|im_start|>role\n...<|im_end|>\n")
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for block in message['content'] %}{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def qwenimage21_prompt_template() -> str:
    """The text-to-image template QwenImage21Pipeline wraps a prompt in (set in its `__init__`, with the system
    prompt; written here from the pipeline's source, which needs a processor to construct)."""
    system = "Comprehend and analyze the provided prompt."
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{{}}<|im_end|>\n<|im_start|>assistant\n"


def build_tiny_qwen3_vl_processor():
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = build_qwen2_tokenizer(qwenimage21_prompt_template())
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2),
                            tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                            chat_template=QWEN3_VL_CHAT_TEMPLATE)


def build_tiny_qwen3_vl(tokenizer, seed: int = 0, width: int = 48, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    """A randomly initialised Qwen3VLForConditionalGeneration over `tokenizer`'s vocabulary."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    head_dim = width // heads
    half = head_dim // 2  # interleaved mrope sections over (t, h, w), as [24, 20, 20] of 64
    sections = [half - 2 * (5 * half // 16), 5 * half // 16, 5 * half // 16]
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, max_position_embeddings=2048,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0,
                                                "mrope_section": sections, "mrope_interleaved": True},
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=width,
                           deepstack_visual_indexes=[0], num_position_embeddings=64),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen3VLForConditionalGeneration(config).eval()


def randomize_text_norm(transformer: torch.nn.Module, seed: int) -> None:
    """Draw the text projection's zero-centred RMSNorm scale at random (a fresh one stores 0: scale 1)."""
    generator = torch.Generator().manual_seed(seed)
    weight = transformer.txt_in.text_norm.weight
    with torch.no_grad():
        weight.copy_(0.3 * torch.randn(weight.shape, generator=generator))


def build_tiny_qwenimage21(seed: int = 0, width: int = 64, heads: int = 2, layers: int = 2, text_width: int = 48):
    """A randomly initialised QwenImage21Pipeline with the real component classes, deterministic by seed."""
    from diffusers import (AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline,
                           QwenImage21Transformer2DModel)

    processor = build_tiny_qwen3_vl_processor()
    text_encoder = build_tiny_qwen3_vl(processor.tokenizer, seed=seed + 1, width=text_width)
    head_dim = width // heads
    spatial = 2 * (7 * head_dim // 32)  # (16, 56, 56) of 128
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        transformer = QwenImage21Transformer2DModel(
            patch_size=1, in_channels=64, out_channels=64, num_layers=layers, attention_head_dim=head_dim,
            num_attention_heads=heads, context_in_dim=text_width, mlp_ratio=3,
            axes_dims_rope=(head_dim - 2 * spatial, spatial, spatial),
        )
        randomize_qk_norms(transformer, seed + 2)
        randomize_text_norm(transformer, seed + 3)
        vae = AutoencoderKLQwenImage21(base_dim=4, decoder_base_dim=4, z_dim=64, dim_mult=[1, 2, 2, 2, 2],
                                       num_res_blocks=1, temperal_downsample=[False, True, True, True])
    return QwenImage21Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=vae, text_encoder=text_encoder,
        processor=processor, transformer=transformer,
    )


def save_tiny_qwenimage21(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_qwenimage21(**kwargs), folder)
