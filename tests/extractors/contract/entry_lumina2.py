"""Lumina Image 2.0 under the contract: the stock `Lumina2Pipeline.__call__` and `Lumina2AttnProcessor2_0`."""

import numpy as np
import torch
from diffusers import Lumina2Pipeline
from diffusers.models.embeddings import apply_rotary_emb

from refam.extractors.lumina2 import Lumina2Extractor
from refam.testing.tiny_lumina2 import save_tiny_lumina2
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels

CAPTION_TOKENS = 48


def _call(pipe, x_t, sigma, text, mask):
    # Lumina2Pipeline.__call__: timestep 1 - t / 1000 of the scheduler's t = 1000 sigma, the caption padded
    # with its mask
    timestep = 1 - torch.full((1,), 1000.0 * sigma) / 1000
    return pipe.transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=text,
                            encoder_attention_mask=mask, return_dict=False)[0]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    embeds, mask, _, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, max_sequence_length=CAPTION_TOKENS)
    return _call(pipe, x_t, sigma, embeds, mask)


def _vectors(attn, inputs, projection, norm):
    # Lumina2AttnProcessor2_0: heads of head_dim, the QK norm, the complex RoPE
    head_dim = attn.to_q.out_features // attn.heads
    x = norm(projection(inputs["hidden_states"]).unflatten(-1, (-1, head_dim)))
    return apply_rotary_emb(x, inputs["image_rotary_emb"], use_real=False)[0]


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    # the stream is [the caption's real rows | image]
    attn = pipe.transformer.layers[0].attn
    embeds, mask, _, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, max_sequence_length=CAPTION_TOKENS)
    image = block_inputs(attn, lambda: _call(pipe, x_t, sigma, embeds, mask))
    length = expression.shape[1]  # the expression as an unpadded caption
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression, torch.ones(1, length, dtype=torch.long)))
    query = _vectors(attn, image, attn.to_q, attn.norm_q)[int(mask.sum()):]
    key = _vectors(attn, text, attn.to_k, attn.norm_k)[:length]
    repeat = attn.heads // key.shape[1]  # grouped-query: each key head serves `repeat` query heads in a row
    return query, key.repeat_interleave(repeat, dim=1)


def positions_off(transformer, monkeypatch):
    rope = transformer.rope_embedder
    monkeypatch.setattr(rope, "freqs_cis", [torch.ones_like(freqs) for freqs in rope.freqs_cis])


def stock_expression(pipe, text, length):
    # Lumina2Pipeline.encode_prompt: the system prompt before the text, Gemma 2's second-to-last layer
    embeds, mask, _, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False)
    assert int(mask.sum()) == length, f"the pipeline reads {int(mask.sum())} rows, the extractor {length}"
    return embeds[0, :length]


def stock_latent(pipe, image, height, width):
    # no image-conditioned Lumina 2 pipeline: the inverse of Lumina2Pipeline's decoding
    # (latents / scaling_factor + shift_factor) on the VAE's mode of the preprocessed image
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    latent = pipe.vae.encode(pixels).latent_dist.mode()
    return (latent - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def scheduler_levels(pipe):
    # Lumina2Pipeline: the scheduler's schedule of linspace(1, 1/N, N), timestep 1 - t / 1000
    levels = flow_levels(pipe, 1000.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.8)
    return [(sigma, 1.0 - told) for sigma, told in levels]


ENTRY = ContractEntry(
    name="lumina2",
    extractor_class=Lumina2Extractor,
    pipeline_class=Lumina2Pipeline,
    save=lambda folder, depth: save_tiny_lumina2(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=128, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    # a 4 x 16 token grid: 64 image tokens, more than the padded caption's 48, so the reference tells the
    # caption's refiner calls from the joint ones by their length
    image_size=(256, 64),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    scheduler_levels=scheduler_levels,
    stock_expression=stock_expression,
)
