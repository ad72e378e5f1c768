"""A HunyuanVideo (1.0)-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as hunyuanvideo-community/HunyuanVideo (HunyuanVideoTransformer3DModel, AutoencoderKLHunyuanVideo,
LlamaModel with a Llama 3 tokenizer, CLIPTextModel and CLIPTokenizer for the pooled vector,
FlowMatchEulerDiscreteScheduler with the checkpoint's static shift 7); a byte-level BPE behind Llama 3's split,
trained on the tiny vocabulary and the pipeline's prompt template (`build_llama3_tokenizer`), stands in for
LLaVA-Llama-3's, so the folder loads through `HunyuanVideoPipeline.from_pretrained` offline and the pipeline's
crop of 95 tokens drops exactly the template's prefix (<|begin_of_text|> and the system turn), as with the real
tokenizer; it pads on the right with "<pad>", which the transformer's mask (real tokens first) assumes.

Shapes kept from the real model: Llama is wider than the transformer (4096 vs 24 x 128 = 3072, here 48 vs 32),
with four layers so that its hidden layer -3 is neither the embeddings nor the last; the token refiner mixes the
caption's tokens before the blocks; dual-stream blocks, then single-stream ones, RoPE on video tokens only (axes
in the real proportions (16, 56, 56) of the head), patches of 1 x 2 x 2 latent cells, a VAE of 8x spatial and 4x
temporal compression, the guidance embedding. The QK norms' scales are drawn at random (fresh ones are all 1),
so that a text-key norm swapped for the video one shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, randomize_qk_norms, save_pipeline_folder, tiny_clip
from refam.testing.tiny_tokenizers import build_llama3_tokenizer


def tiny_hunyuanvideo_vae(latent_channels: int = 4):
    """AutoencoderKLHunyuanVideo at CPU size (8x space, 4x time, its scaling factor), drawn from torch's current
    random state: HunyuanVideo's and Kandinsky 6's VAE."""
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=latent_channels, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=4,
    )


def build_tiny_hunyuanvideo(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2, single_layers: int = 2,
                            text_width: int = 48, pooled_width: int = 24, latent_channels: int = 4, text_layers: int = 4):
    """A randomly initialised HunyuanVideoPipeline with the real component classes, deterministic by seed."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import LlamaConfig, LlamaModel

    tokenizer, (tokenizer_2, _) = build_llama3_tokenizer([DEFAULT_PROMPT_TEMPLATE["template"]], "<pad>"), build_tokenizers()
    spatial = 2 * (7 * head_dim // 32)  # (16, 56, 56) of 128
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = LlamaModel(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
            num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        )).eval()
        text_encoder_2 = tiny_clip(tokenizer_2, pooled_width)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=latent_channels, out_channels=latent_channels, num_attention_heads=heads,
            attention_head_dim=head_dim, num_layers=layers, num_single_layers=single_layers, num_refiner_layers=2,
            mlp_ratio=2.0, patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=text_width,
            pooled_projection_dim=pooled_width, rope_axes_dim=(head_dim - 2 * spatial, spatial, spatial),
        )
        randomize_qk_norms(transformer, seed + 2)
        vae = tiny_hunyuanvideo_vae(latent_channels)
    return HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=7.0),
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )


def save_tiny_hunyuanvideo(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_hunyuanvideo(**kwargs), folder)
