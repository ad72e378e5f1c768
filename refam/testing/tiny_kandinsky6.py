"""A Kandinsky 6-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as the Kandinsky 6.0 checkpoints (Kandinsky6Transformer3DModel, AutoencoderKLHunyuanVideo,
Qwen2_5_VLForConditionalGeneration read through a Qwen2_5_VLProcessor, CLIPTextModel and CLIPTokenizer for the
pooled vector, FlowMatchEulerDiscreteScheduler), without the optional audio VAE and vocoder (refam denoises
video alone, the pipeline's `sample_audio=False`). A byte-level BPE trained on the tiny vocabulary and the
pipeline's prompt template stands in for Qwen2.5's; two of the template's rare words ("scren", "dynamism") are
left in two pieces each so that its prefix is the pipeline's crop of 129 tokens, as with the real tokenizer.

Shapes kept from the real model: Qwen is wider than the transformer's text input (3584) and the transformer has
its own text blocks (self-attention with RoPE over the caption's tokens) for the video and the audio branch; the
fused blocks cross-attend video queries to the refined text; patches of 1 x 2 x 2 latent cells over a
[B, T, H, W, C] latent with conditioning channels (2 C + 1); the released flags (`text_token_padding`,
`ca_rope`, `cross_gates`, `fix_modulation`) set. Every QK norm (per head) is drawn at random.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, save_pipeline_folder, tiny_clip
from refam.testing.tiny_hunyuanvideo import tiny_hunyuanvideo_vae
from refam.testing.tiny_qwenimage import build_tiny_qwen2_5_vl
from refam.testing.tiny_tokenizers import build_qwen2_tokenizer


def kandinsky6_template() -> str:
    from diffusers.pipelines.kandinsky6.pipeline_kandinsky6_ti2va import _PROMPT_TEMPLATE

    return _PROMPT_TEMPLATE


def build_kandinsky6_processor():
    """A Qwen2_5_VLProcessor over `build_qwen2_tokenizer` trained on the template (two rare words split)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    split = kandinsky6_template().replace("scren", "sc ren").replace("dynamism", "dynam ism")
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=build_qwen2_tokenizer(split),
                               video_processor=Qwen2VLVideoProcessor())


def randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Draw the scales of Kandinsky 6's per-head `query_norm` / `key_norm` at random (fresh ones are all 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("query_norm.weight", "key_norm.weight")):
                parameter.copy_(1.0 + 0.3 * torch.randn(parameter.shape, generator=generator))


def build_tiny_kandinsky6(seed: int = 0, head_dim: int = 16, width: int = 32, layers: int = 2, text_width: int = 48,
                          pooled_width: int = 24, latent_channels: int = 4):
    """A randomly initialised Kandinsky6TI2VAPipeline (no audio VAE, no vocoder), deterministic by seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky6TI2VAPipeline, Kandinsky6Transformer3DModel

    processor, (tokenizer_2, _) = build_kandinsky6_processor(), build_tokenizers()
    text_encoder = build_tiny_qwen2_5_vl(processor.tokenizer, seed=seed + 1, width=text_width, layers=3)
    spatial = 3 * head_dim // 8
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder_2 = tiny_clip(tokenizer_2, pooled_width)
        transformer = Kandinsky6Transformer3DModel(
            in_visual_dim=latent_channels, out_visual_dim=latent_channels, in_text_dim=text_width,
            in_text_dim2=pooled_width, time_dim=32, patch_size=(1, 2, 2), model_dim=width, ff_dim=2 * width,
            num_text_blocks=2, num_visual_blocks=layers, axes_dims=(head_dim - 2 * spatial, spatial, spatial),
            in_audio_dim=4, out_audio_dim=4, text_token_padding=True, ca_rope=True, cross_gates=True,
            fix_modulation=True,
        )
        randomize_norms(transformer, seed + 2)
        vae = tiny_hunyuanvideo_vae(latent_channels)
    return Kandinsky6TI2VAPipeline(
        transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=processor, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0),
    )


def save_tiny_kandinsky6(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_kandinsky6(**kwargs), folder)
