"""FLUX.1 under the contract: the stock `FluxPipeline.__call__` and `FluxAttnProcessor`."""

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.pipelines.flux.pipeline_flux_img2img import FluxImg2ImgPipeline, retrieve_latents

from refam.extractors.flux import FluxExtractor
from tests.extractors.contract.contract import ContractEntry, flow_levels, block_inputs, rope_off
from refam.testing.tiny_flux import save_tiny_flux


def _call(pipe, x_t, sigma, grid, text, pooled):
    # FluxPipeline.__call__: timestep / 1000 of sigma * 1000, zero text ids, image ids (0, row, col)
    return pipe.transformer(
        hidden_states=x_t, encoder_hidden_states=text, pooled_projections=pooled,
        timestep=torch.full((1,), sigma), guidance=torch.full((1,), 3.5),
        img_ids=pipe._prepare_latent_image_ids(1, grid[1], grid[2], "cpu", torch.float32),
        txt_ids=torch.zeros(text.shape[1], 3), return_dict=False,
    )[0]


def _caption(pipe, caption):
    embeds, pooled, _ = pipe.encode_prompt(prompt=caption, prompt_2=caption, max_sequence_length=16)
    return embeds, pooled


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, grid, *_caption(pipe, caption))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    embeds, pooled = _caption(pipe, caption)
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, embeds, pooled))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, expression, pooled))  # the expression as the caption
    return double_block_vectors(attn, image, text, x_t.shape[1], expression.shape[1])


def double_block_vectors(attn, image, text, n, length):
    """A FLUX.1 double block's image queries and text keys from its inputs in a call with the caption
    (`image`) and one with the expression as the caption (`text`): norms, then the stock RoPE."""
    cos, sin = image["image_rotary_emb"]
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(-1, (attn.heads, -1)))
    query = apply_rotary_emb(query, (cos[-n:], sin[-n:]), sequence_dim=1)
    cos, sin = text["image_rotary_emb"]
    key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"]).unflatten(-1, (attn.heads, -1)))
    key = apply_rotary_emb(key, (cos[:length], sin[:length]), sequence_dim=1)
    return query[0], key[0]


def stock_expression(pipe, text, length):
    # the T5 rows (prompt_2) of FluxPipeline.encode_prompt, unmasked: exactly `length` tokens, no padding
    return pipe.encode_prompt(prompt=text, prompt_2=text, max_sequence_length=length)[0][0]


def stock_latent(pipe, image, height, width):
    # FluxImg2ImgPipeline: image_processor.preprocess, _encode_vae_image ((z - shift_factor) *
    # scaling_factor; the VAE's mode where it samples), _pack_latents (2 x 2 cells per token)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax")
    latent = (latent - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    return FluxImg2ImgPipeline._pack_latents(latent, 1, *latent.shape[1:])


ENTRY = ContractEntry(
    name="flux",
    extractor_class=FluxExtractor,
    pipeline_class=FluxPipeline,
    save=lambda folder, depth: save_tiny_flux(folder, double_blocks=depth, single_blocks=depth),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=16),
    image_size=(120, 70),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=rope_off,
    stock_latent=stock_latent,
    # FluxPipeline: the scheduler's schedule of linspace(1, 1/N, N) at its mu, timestep / 1000
    scheduler_levels=lambda pipe: flow_levels(pipe, 1000.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.8),
    stock_expression=stock_expression,
    depth_observations=lambda depth: 2 * depth,
)
