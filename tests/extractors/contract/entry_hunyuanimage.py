"""HunyuanImage 2.1 under the contract: the stock `HunyuanImagePipeline.__call__` and `HunyuanImageAttnProcessor`
(dual- then single-stream blocks); the caption's Qwen rows go through the transformer's token refiner before the
blocks, the blocks mask the caption's padding keys."""

import numpy as np
import torch
from diffusers import HunyuanImagePipeline
from diffusers.models.embeddings import apply_rotary_emb

from refam.extractors.hunyuanimage import HunyuanImageExtractor
from refam.testing.tiny_hunyuanimage import save_tiny_hunyuanimage
from tests.extractors.contract.contract import (ContractEntry, block_inputs, flow_levels, latent_rope_off,
                                                text_side_attention)

CAPTION_TOKENS = 24  # the pipeline's tokenizer_max_length (1000 in the real one): the Qwen rows after the crop

def _call(pipe, x_t, sigma, text, mask, glyph, glyph_mask):
    # HunyuanImagePipeline.__call__ (base model: no guidance embedding, no meanflow): the scheduler's timestep
    # (1000 sigma) in the latents' dtype, the masks as encode_prompt returns them
    return pipe.transformer(hidden_states=x_t, timestep=torch.full((1,), 1000.0 * sigma), encoder_hidden_states=text,
                            encoder_attention_mask=mask, encoder_hidden_states_2=glyph, encoder_attention_mask_2=glyph_mask,
                            return_dict=False)[0]

def _prompt(pipe, text, length):
    pipe.tokenizer_max_length = length  # the pipeline pads (and cuts) its Qwen prompt to this after the crop
    return pipe.encode_prompt(text, device="cpu")

def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_prompt(pipe, caption, CAPTION_TOKENS))

def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    # the expression as the whole Qwen caption (no padding, no glyph text): the token refiner mixes its rows
    # alone, and the reordered caption stream starts with them (no real glyph rows before them)
    length = expression.shape[1]
    _, _, glyph, glyph_mask = _prompt(pipe, "", CAPTION_TOKENS)
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression, torch.ones(1, length), glyph, glyph_mask))
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(2, (attn.heads, -1)))
    query = apply_rotary_emb(query, image["image_rotary_emb"], sequence_dim=1)  # image tokens only
    key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"][:, :length]).unflatten(2, (attn.heads, -1)))
    return query[0], key[0]

def stock_expression(pipe, text, length):
    # HunyuanImagePipeline.encode_prompt: the template, 34 tokens cropped, hidden layer -3, a prompt exactly
    # `length` tokens long
    embeds, mask, _, _ = _prompt(pipe, text, length)
    assert mask.all(), "the prompt was padded"
    return embeds[0]

def stock_latent(pipe, image, height, width):
    # diffusers has no image-conditioned HunyuanImage 2.1 pipeline (the refiner's has another VAE): the inverse
    # of HunyuanImagePipeline's decode (latents / scaling_factor), on its image_processor's pixels, the VAE's mode
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor

def reference_hooks(transformer, valid):
    # the token refiner's own attention (the caption's, and the branch's as captions) is not a block
    return text_side_attention(transformer.context_embedder)

ENTRY = ContractEntry(
    name="hunyuanimage",
    extractor_class=HunyuanImageExtractor,
    pipeline_class=HunyuanImagePipeline,
    save=lambda folder, depth: save_tiny_hunyuanimage(folder, layers=depth, single_layers=depth),
    settings=dict(torch_dtype="float32", resolution=192, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    image_size=(120, 70),  # 256 x 160 pixels: a 5 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=latent_rope_off,
    stock_latent=stock_latent,
    # HunyuanImagePipeline: sigmas linspace(1, 0, N + 1)[:-1] through the scheduler's static shift, its
    # timesteps (1000 sigma) told as they are
    scheduler_levels=lambda pipe: flow_levels(pipe, 1.0, sigmas=np.linspace(1.0, 0.0, 9)[:-1]),
    stock_expression=stock_expression,
    reference_hooks=reference_hooks,
    patch=(1, 1, 1),
    depth_observations=lambda depth: 2 * depth,
)
