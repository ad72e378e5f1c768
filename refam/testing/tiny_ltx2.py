"""An LTX-2-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as Lightricks/LTX-2 (LTX2VideoTransformer3DModel, AutoencoderKLLTX2Video, AutoencoderKLLTX2Audio,
LTX2Vocoder, Gemma3ForConditionalGeneration with GemmaTokenizer, LTX2TextConnectors, FlowMatchEulerDiscreteScheduler
with its dynamic shift). The tokenizer is `build_gemma_tokenizer`'s (Gemma's layout, <bos> first). Shapes kept from
the real model: the video VAE compresses 32 x 32 pixels and 8 frames (causal: 8 k + 1 frames) into a latent cell,
the transformer takes 1 x 1 x 1 patches; every Gemma hidden state (the embeddings and each layer's) is stacked into
the connectors, whose video connector replaces the caption's padding by learnt registers (the real model's 128;
here 8, so `caption_max_tokens` must be a multiple of 8); Gemma (24) is narrower than the transformer (32) and wider
than its audio stream (16). Every QK-norm scale (the transformer's and the connectors') and the VAE's per-channel
latent statistics are drawn at random (fresh ones are 1 and 0), so that a skipped norm or normalisation shows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refam.testing.tiny_flux import randomize_qk_norms, save_pipeline_folder
from refam.testing.tiny_lumina2 import build_gemma_tokenizer

REGISTERS = 8


def tiny_gemma3(tokenizer, width: int, layers: int = 2):
    """A Gemma3ForConditionalGeneration (a tiny SigLIP beside its text model) over `build_gemma_tokenizer`'s
    vocabulary, drawn from torch's current random state."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=width // 2, max_position_embeddings=256,
                            sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)).eval()


def tiny_ltx2_vae(latent_channels: int = 4):
    """An AutoencoderKLLTX2Video with the real compression: 4 x 4 pixel patches, then three space-time halvings
    (32 in space, 8 in time), its latent statistics drawn at random."""
    from diffusers import AutoencoderKLLTX2Video

    vae = AutoencoderKLLTX2Video(
        latent_channels=latent_channels, block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
        downsample_type=("spatiotemporal",) * 3, upsample_residual=(False,) * 3, upsample_factor=(1, 1, 1),
        patch_size=4, patch_size_t=1,
    )
    with torch.no_grad():
        vae.latents_mean.copy_(0.2 * torch.randn(latent_channels))
        vae.latents_std.copy_(0.5 + torch.rand(latent_channels))
    return vae


def build_tiny_ltx2(seed: int = 0, heads: int = 2, head_dim: int = 16, layers: int = 2, text_width: int = 24):
    """A randomly initialised LTX2Pipeline with the real component classes, deterministic by seed."""
    from diffusers import AutoencoderKLLTX2Audio, FlowMatchEulerDiscreteScheduler, LTX2Pipeline, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    tokenizer = build_gemma_tokenizer(texts=())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        text_encoder = tiny_gemma3(tokenizer, text_width)
        text_layers = text_encoder.config.text_config.num_hidden_layers + 1
        connectors = LTX2TextConnectors(
            caption_channels=text_width, text_proj_in_factor=text_layers, video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=text_width // 2, video_connector_num_layers=1,
            video_connector_num_learnable_registers=REGISTERS, audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=text_width // 2, audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=REGISTERS, connector_rope_base_seq_len=64, rope_type="split")
        transformer = LTX2VideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=head_dim,
            cross_attention_dim=heads * head_dim, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
            audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=layers, caption_channels=text_width,
            rope_type="split", gated_attn=True, cross_attn_mod=True)
        randomize_qk_norms(transformer, seed + 2)
        randomize_qk_norms(connectors, seed + 3)
        vae = tiny_ltx2_vae()
        audio_vae = AutoencoderKLLTX2Audio(base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, in_channels=2,
                                           resolution=32, latent_channels=2, mel_bins=8)
        vocoder = LTX2Vocoder(in_channels=16, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[4, 4],
                              upsample_factors=[2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                              output_sampling_rate=16000)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True, base_image_seq_len=1024,
                                                max_image_seq_len=4096, base_shift=0.95, max_shift=2.05)
    return LTX2Pipeline(scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        connectors=connectors, transformer=transformer, vocoder=vocoder)


def save_tiny_ltx2(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_ltx2(**kwargs), folder)
