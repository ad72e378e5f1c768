"""SANA under the contract: the stock `SanaPipeline.__call__` and `SanaAttnProcessor2_0` of each block's attn2
(image queries, the caption's Gemma keys after a QK norm over all heads, its padding masked by a bias); the
prompt is read lowercased after the pipeline's complex human instruction, BOS and its own rows kept."""

import inspect

import torch
from diffusers import SanaControlNetPipeline, SanaPipeline

from refam.extractors.sana import SanaExtractor
from refam.testing.tiny_sana import save_tiny_sana
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels

CAPTION_TOKENS = 16
INSTRUCTION = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default


def _call(pipe, x_t, sigma, text, mask):
    # SanaPipeline.__call__: the DPM-Solver's int64 timestep (1000 sigma truncated: 600 at the contract's 0.6)
    # times the config's timestep_scale, the caption's mask as encode_prompt returns it
    timestep = torch.tensor([int(1000 * sigma)]) * pipe.transformer.config.timestep_scale
    return pipe.transformer(x_t, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=timestep,
                            return_dict=False)[0]


def _prompt(pipe, text, length):
    embeds, mask, _, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=length,
                                            complex_human_instruction=INSTRUCTION, device="cpu")
    return embeds, mask


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_prompt(pipe, caption, CAPTION_TOKENS))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn2
    # SanaTransformerBlock calls attn2(hidden_states, encoder_hidden_states=projected and normed text, the mask's
    # bias): the QK norm over all heads at once (SANA 1.5's rms_norm_across_heads), no positions
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression, torch.ones(expression.shape[:2])))
    query = attn.norm_q(attn.to_q(image["args"][0])).unflatten(-1, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(text["encoder_hidden_states"])).unflatten(-1, (attn.heads, -1))
    return query[0], key[0]


def stock_expression(pipe, text, length):
    # SanaPipeline.encode_prompt: lowercased, after the instruction, BOS and the prompt's rows, exactly `length`
    embeds, mask = _prompt(pipe, text, length)
    assert mask.all(), "the prompt was padded"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # SanaControlNetPipeline: its prepare_image's pixels, the DC-AE's latent times scaling_factor
    pixels = SanaControlNetPipeline.prepare_image(pipe, image, width, height, 1, 1, "cpu", pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent * pipe.vae.config.scaling_factor


def positions_off(transformer, monkeypatch):
    """SANA embeds no positions: its only ones are the feed-forward's zero-padded 3 x 3 depthwise convolution,
    here kept at its centre tap, so that each token's feed-forward sees its own cell alone."""
    for block in transformer.transformer_blocks:
        conv = block.ff.conv_depth
        kernel = torch.zeros_like(conv.weight)
        kernel[..., 1, 1] = conv.weight[..., 1, 1]
        monkeypatch.setattr(conv, "weight", torch.nn.Parameter(kernel))


ENTRY = ContractEntry(
    name="sana",
    extractor_class=SanaExtractor,
    pipeline_class=SanaPipeline,
    save=lambda folder, depth: save_tiny_sana(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=192, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    image_size=(120, 70),  # 256 x 160 pixels: a 5 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # SanaPipeline: the DPM-Solver's flow sigmas through its static flow_shift, int64 timesteps
    scheduler_levels=lambda pipe: flow_levels(pipe),
    stock_expression=stock_expression,
    patch=(1, 1, 1),
)
