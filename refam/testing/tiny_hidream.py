"""A HiDream-I1-architecture pipeline built tiny from configs, saved in the diffusers layout.

Same classes as HiDream-ai/HiDream-I1-Full (HiDreamImageTransformer2DModel, two CLIPTextModelWithProjection,
T5EncoderModel, LlamaForCausalLM with a Llama 3 tokenizer, FLUX's AutoencoderKL, UniPCMultistepScheduler on
flow sigmas with a static shift of 3, recalled, not read); the offline vocabularies of `refam.testing.tiny_flux`
and `build_llama3_tokenizer` stand in for the real ones, so the folder loads through
`HiDreamImagePipeline.from_pretrained` offline.

Shapes kept from the real model: four text encoders of four widths, none the transformer's (CLIP-L 8 and CLIP-G
16 pooled, as 768 and 1280; T5 24 and Llama 40, 4096 both in the real model; the transformer 32), a Llama layer
per block (`llama_layers`, here in reverse order so that a block reading the wrong layer shows), the double-
then single-stream blocks with their mixture-of-experts feed-forwards, 3-axis RoPE on image tokens (text ids
are zeros), and `max_resolution`, to which a non-square latent's tokens are padded (here 16 x 16 latent cells:
64 tokens). CLIP reads up to 218 tokens in the pipeline, so the tiny CLIPs hold 248 positions. Every QK
RMSNorm scale is drawn at random (fresh ones are all 1), so that a text-key norm swapped for the image one shows.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from refam.testing.tiny_flux import build_tokenizers, save_pipeline_folder, tiny_t5
from refam.testing.tiny_tokenizers import build_llama3_tokenizer
from refam.testing.tiny_zimage import build_flux_vae

CLIP_WIDTHS, T5_WIDTH, LLAMA_WIDTH = (8, 16), 24, 40


def _clip(tokenizer, width: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=248, projection_dim=width, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def _llama(tokenizer, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=LLAMA_WIDTH, intermediate_size=2 * LLAMA_WIDTH, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )).eval()


def randomize_rms_norms(model: torch.nn.Module, seed: int) -> None:
    """Draw every `*rms_norm*` scale of `model` at random (HiDream's QK norms; fresh ones are 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "rms_norm" in name:
                parameter.copy_(1.0 + 0.3 * torch.randn(parameter.shape, generator=generator))


def build_tiny_hidream(seed: int = 0, heads: int = 2, head_dim: int = 16, double_blocks: int = 2, single_blocks: int = 2):
    """A randomly initialised HiDreamImagePipeline with the real component classes, deterministic by seed."""
    from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel, UniPCMultistepScheduler

    clip_l_tok, t5_tok = build_tokenizers(clip_max_length=248)
    clip_g_tok = copy.deepcopy(clip_l_tok)
    llama_tok = build_llama3_tokenizer()
    blocks = double_blocks + single_blocks
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip_l, clip_g = _clip(clip_l_tok, CLIP_WIDTHS[0]), _clip(clip_g_tok, CLIP_WIDTHS[1])
        t5 = tiny_t5(t5_tok, d_model=T5_WIDTH, feed_forward_proj="gated-gelu")
        llama = _llama(llama_tok, layers=blocks)
        spatial = head_dim // 4  # (64, 32, 32) of 128
        transformer = HiDreamImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=16, num_layers=double_blocks, num_single_layers=single_blocks,
            attention_head_dim=head_dim, num_attention_heads=heads, caption_channels=[T5_WIDTH, LLAMA_WIDTH],
            text_emb_dim=sum(CLIP_WIDTHS), num_routed_experts=4, num_activated_experts=2,
            axes_dims_rope=(head_dim - 2 * spatial, spatial, spatial), max_resolution=(16, 16),
            llama_layers=list(reversed(range(blocks))),
        )
        randomize_rms_norms(transformer, seed + 2)
        vae = build_flux_vae()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return HiDreamImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip_l, tokenizer=clip_l_tok, text_encoder_2=clip_g,
        tokenizer_2=clip_g_tok, text_encoder_3=t5, tokenizer_3=t5_tok, text_encoder_4=llama, tokenizer_4=llama_tok,
        transformer=transformer,
    )


def save_tiny_hidream(folder: str | Path, **kwargs) -> Path:
    return save_pipeline_folder(build_tiny_hidream(**kwargs), folder)
