"""FLUX.2 [dev] under the contract: the stock `Flux2Pipeline.__call__`, `Flux2AttnProcessor` (double
blocks) and `Flux2ParallelSelfAttnProcessor` (single blocks); Mistral 3 prompts, left-padded.
FLUX.2 [klein] is `Flux2KleinPipeline`: Qwen3 prompts, right-padded, no guidance."""

import numpy as np
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from diffusers.models.embeddings import apply_rotary_emb

from refam.extractors.flux2 import Flux2Extractor
from tests.extractors.contract.contract import ContractEntry, flow_levels, block_inputs, rope_off
from refam.testing.tiny_flux2 import save_tiny_flux2

CAPTION_TOKENS = 64  # the tiny template (dev: BOS, system prompt, [INST] [/INST]) and an expression fit
LAYERS = (1, 2, 3)  # stacked hidden layers of a 4-layer LLM (the real 40-layer Mistral: (10, 20, 30))


def _call(pipe, x_t, sigma, grid, text, txt_ids):
    # Flux2Pipeline / Flux2KleinPipeline.__call__: timestep / 1000 of the scheduler's 1000 sigma,
    # guidance 4.0 in float32 (dev) or None (klein), image ids (0, row, col, 0), text ids
    # (0, 0, 0, l) over the whole padded prompt, no mask
    guidance = torch.full((1,), 4.0, dtype=torch.float32) if pipe.transformer.config.guidance_embeds else None
    return pipe.transformer(
        hidden_states=x_t, encoder_hidden_states=text, timestep=torch.full((1,), sigma), guidance=guidance,
        txt_ids=txt_ids, img_ids=pipe._prepare_latent_ids(torch.zeros(1, 1, grid[1], grid[2])), return_dict=False,
    )[0]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    embeds, txt_ids = pipe.encode_prompt(caption, max_sequence_length=CAPTION_TOKENS, text_encoder_out_layers=LAYERS)
    return _call(pipe, x_t, sigma, grid, embeds, txt_ids)


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    # the expression as the caption, padded as the pipeline's tokenizer pads: dev on the left (its L
    # tokens end the prompt), klein on the right (they start it)
    length, padding = expression.shape[1], expression.new_zeros(1, CAPTION_TOKENS - expression.shape[1], expression.shape[2])
    left = isinstance(pipe, Flux2Pipeline)
    prompt = torch.cat([padding, expression] if left else [expression, padding], dim=1)
    rows = slice(CAPTION_TOKENS - length, CAPTION_TOKENS) if left else slice(0, length)
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, prompt, pipe._prepare_text_ids(prompt)))
    n = x_t.shape[1]
    cos, sin = image["image_rotary_emb"]
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(-1, (-1, attn.head_dim)))
    query = apply_rotary_emb(query, (cos[-n:], sin[-n:]), sequence_dim=1)
    cos, sin = text["image_rotary_emb"]
    key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"][:, rows]).unflatten(-1, (-1, attn.head_dim)))
    key = apply_rotary_emb(key, (cos[rows], sin[rows]), sequence_dim=1)
    return query[0], key[0]


def stock_expression(pipe, text, length):
    # Flux2Pipeline / Flux2KleinPipeline.encode_prompt: the prompt in the chat template, the stacked
    # hidden layers, exactly `length` tokens long (no padding)
    return pipe.encode_prompt(text, max_sequence_length=length, text_encoder_out_layers=LAYERS)[0][0]


def stock_latent(pipe, image, height, width):
    # Flux2Pipeline / Flux2KleinPipeline's reference image: image_processor.preprocess, their own
    # _encode_vae_image (the VAE's mode, 2 x 2 patchified, normalised by the VAE's batch-norm
    # statistics) and _pack_latents (row-major tokens)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    return pipe._pack_latents(pipe._encode_vae_image(pixels, generator=None))


def entry(variant: str) -> ContractEntry:
    return ContractEntry(
        name="flux2" if variant == "dev" else "flux2-klein",
        extractor_class=Flux2Extractor,
        pipeline_class=Flux2Pipeline if variant == "dev" else Flux2KleinPipeline,
        save=lambda folder, depth: save_tiny_flux2(folder, variant=variant, double_blocks=depth, single_blocks=depth,
                                                   text_depth=4),
        settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS,
                      text_layers=list(LAYERS)),
        image_size=(120, 70),
        stock_velocity=stock_velocity,
        block0_vectors=block0_vectors,
        positions_off=rope_off,
        stock_latent=stock_latent,
        # Flux2Pipeline / Flux2KleinPipeline: as FLUX.1, their own mu, timestep / 1000
        scheduler_levels=lambda pipe: flow_levels(pipe, 1000.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.8),
        stock_expression=stock_expression,
        depth_observations=lambda depth: 2 * depth,
    )


ENTRIES = [entry("dev"), entry("klein")]
