"""A SANA-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Efficient-Large-Model/Sana_1600M_1024px_diffusers (SanaTransformer2DModel, Gemma2Model,
GemmaTokenizer, AutoencoderDC, DPMSolverMultistepScheduler with flow sigmas); the tokenizer is GemmaTokenizer's
own layout over a vocabulary made here (`build_gemma_tokenizer`), each tiny-vocabulary word and each word of the
pipeline's complex human instruction one token, so the folder loads through `SanaPipeline.from_pretrained`
offline and a prompt after the instruction stays short.

Shapes kept from the real model: Gemma 2 is narrower than the transformer (2304 vs 2240, here 24 vs 32);
each block's image tokens attend to themselves by linear attention (`attn1`) and to the caption in `attn2`
under a mask over its padding; the feed-forward is a depthwise-convolution GLU (SANA's only positions, no
embedding); a DC-AE of 32x spatial compression (32 channels, here 8; deterministic, no distribution), one
token per latent cell. The cross-attention QK norm is SANA 1.5's, over all heads at once, its scales drawn at
random (SANA 1.0 has none), so that a norm applied per head or swapped shows.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_lumina2 import build_gemma_tokenizer, tiny_gemma2


def sana_instruction() -> str:
    """SanaPipeline.__call__'s default complex human instruction, as `_get_gemma_prompt_embeds` joins it."""
    from diffusers import SanaPipeline

    return "\n".join(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def build_tiny_sana(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2, text_width: int = 24,
                    latent_channels: int = 8, text_layers: int = 3):
    """A randomly initialised SanaPipeline with the real component classes, deterministic by seed."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = build_gemma_tokenizer((sana_instruction().replace("\n", " ") + " _",))
    width = heads * head_dim
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = tiny_gemma2(tokenizer, text_width, text_layers)
        transformer = SanaTransformer2DModel(
            in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=heads,
            attention_head_dim=head_dim, num_layers=layers, num_cross_attention_heads=heads,
            cross_attention_head_dim=head_dim, cross_attention_dim=width, caption_channels=text_width, mlp_ratio=2.0,
            sample_size=8, patch_size=1, qk_norm="rms_norm_across_heads",
        )
        randomize_qk_norms(transformer, seed + 2)
        vae = AutoencoderDC(
            in_channels=3, latent_channels=latent_channels, attention_head_dim=4,
            encoder_block_types=("ResBlock",) * 5 + ("EfficientViTBlock",),
            decoder_block_types=("ResBlock",) * 5 + ("EfficientViTBlock",),
            encoder_block_out_channels=(8,) * 6, decoder_block_out_channels=(8,) * 6,
            encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6,
            encoder_qkv_multiscales=((),) * 5 + ((5,),), decoder_qkv_multiscales=((),) * 5 + ((5,),),
            downsample_block_type="conv", upsample_block_type="interpolate", scaling_factor=0.41407,
        )
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    return SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=scheduler)


def save_tiny_sana(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_sana(**kwargs), folder)
