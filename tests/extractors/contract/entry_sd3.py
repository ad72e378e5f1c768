"""Stable Diffusion 3.5 under the contract: the stock `StableDiffusion3Pipeline.__call__` and
`JointAttnProcessor2_0`, on SD3.5-medium's three block kinds (dual attention, plain, context_pre_only)."""

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents

from refam.extractors.sd3 import SD3Extractor
from tests.extractors.contract.contract import ContractEntry, flow_levels, block_inputs
from refam.testing.tiny_sd3 import save_tiny_sd3


def _call(pipe, x_t, sigma, text, pooled):
    # StableDiffusion3Pipeline.__call__: the scheduler's timestep (1000 sigma) as is, no mask, no ids
    return pipe.transformer(hidden_states=x_t, timestep=torch.full((1,), 1000.0 * sigma), encoder_hidden_states=text,
                            pooled_projections=pooled, return_dict=False)[0]


def _caption(pipe, caption):
    embeds, _, pooled, _ = pipe.encode_prompt(caption, None, None, do_classifier_free_guidance=False, max_sequence_length=16)
    return embeds, pooled


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_caption(pipe, caption))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    embeds, pooled = _caption(pipe, caption)
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: _call(pipe, x_t, sigma, embeds, pooled))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression, pooled))  # the expression as the caption
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(-1, (attn.heads, -1)))  # no RoPE in SD3
    key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"]).unflatten(-1, (attn.heads, -1)))
    return query[0], key[0]


def positions_off(transformer, monkeypatch):
    """SD3's only positions: the sin-cos table added to the image tokens (text tokens have none)."""
    monkeypatch.setattr(transformer.pos_embed, "pos_embed", torch.zeros_like(transformer.pos_embed.pos_embed))


def stock_expression(pipe, text, length):
    # StableDiffusion3Pipeline.encode_prompt: [77 CLIP rows | T5 rows]; the T5 rows, `length` tokens
    embeds = pipe.encode_prompt(text, None, None, do_classifier_free_guidance=False, max_sequence_length=length)[0]
    return embeds[0, pipe.tokenizer_max_length :]


def stock_latent(pipe, image, height, width):
    # StableDiffusion3Img2ImgPipeline: image_processor.preprocess, prepare_latents' (z - shift_factor) *
    # scaling_factor (the VAE's mode where it samples); the transformer patchifies [1, C, h, w] itself
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax")
    return (latent - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


ENTRY = ContractEntry(
    name="sd3",
    extractor_class=SD3Extractor,
    pipeline_class=StableDiffusion3Pipeline,
    # depth dual-attention blocks, depth plain ones, and the last (context_pre_only) block
    save=lambda folder, depth: save_tiny_sd3(folder, layers=2 * depth + 1, dual_attention_layers=tuple(range(depth))),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=16),
    image_size=(120, 70),  # a 5 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # StableDiffusion3Pipeline: the scheduler's static-shift schedule, its timesteps as they are
    scheduler_levels=lambda pipe: flow_levels(pipe),
    stock_expression=stock_expression,
    depth_observations=lambda depth: 2 * depth + 1,
)
