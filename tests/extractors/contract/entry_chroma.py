"""Chroma under the contract: the stock `ChromaPipeline.__call__` and `FluxAttnProcessor` (double and
single blocks), with the pipeline's T5-padding mask turned by each block into its pairwise bias."""

import numpy as np
import torch
from diffusers import ChromaPipeline

from refam.extractors.chroma import ChromaExtractor
from refam.testing.tiny_chroma import save_tiny_chroma
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels, rope_off
from tests.extractors.contract.entry_flux import double_block_vectors, stock_latent


def _call(pipe, x_t, sigma, grid, text, mask):
    # ChromaPipeline.__call__: timestep / 1000 of sigma * 1000, zero text ids, image ids (0, row, col), the
    # prompt's mask extended by ones over the image (_prepare_attention_mask)
    return pipe.transformer(
        hidden_states=x_t, encoder_hidden_states=text, timestep=torch.full((1,), sigma),
        img_ids=pipe._prepare_latent_image_ids(1, grid[1], grid[2], "cpu", torch.float32),
        txt_ids=torch.zeros(text.shape[1], 3),
        attention_mask=pipe._prepare_attention_mask(1, x_t.shape[1], torch.float32, mask), return_dict=False,
    )[0]


def _caption(pipe, caption):
    embeds, _, mask, *_ = pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False, max_sequence_length=16)
    return embeds, mask


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, grid, *_caption(pipe, caption))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, *_caption(pipe, caption)))
    # the expression as the caption, all its tokens kept
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, expression, torch.ones(expression.shape[:2])))
    return double_block_vectors(attn, image, text, x_t.shape[1], expression.shape[1])


def stock_expression(pipe, text, length):
    # ChromaPipeline.encode_prompt's T5 rows (masked encoder) of a prompt exactly `length` tokens long
    return pipe.encode_prompt(prompt=text, do_classifier_free_guidance=False, max_sequence_length=length)[0][0]


ENTRY = ContractEntry(
    name="chroma",
    extractor_class=ChromaExtractor,
    pipeline_class=ChromaPipeline,
    save=lambda folder, depth: save_tiny_chroma(folder, double_blocks=depth, single_blocks=depth),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=16),
    image_size=(120, 70),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=rope_off,
    stock_latent=stock_latent,  # ChromaImg2ImgPipeline's is FluxImg2ImgPipeline's, copied
    # ChromaPipeline: the scheduler's schedule of linspace(1, 1/N, N) at its mu, timestep / 1000
    scheduler_levels=lambda pipe: flow_levels(pipe, 1000.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.8),
    stock_expression=stock_expression,
    depth_observations=lambda depth: 2 * depth,
)
