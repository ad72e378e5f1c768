"""HunyuanVideo 1.0 under the contract: the stock `HunyuanVideoPipeline.__call__` (text-to-video) and
`HunyuanVideoAttnProcessor2_0` (dual- then single-stream blocks); the caption's Llama rows go through the
transformer's token refiner before the blocks, the blocks mask the caption's padding keys."""

import numpy as np
import torch
from diffusers import HunyuanVideoPipeline
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import retrieve_latents

from refam.extractors.hunyuanvideo import HunyuanVideoExtractor
from refam.testing.tiny_hunyuanvideo import save_tiny_hunyuanvideo
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels, latent_rope_off
from tests.extractors.contract.entry_hunyuanvideo15 import reference_hooks

CAPTION_TOKENS, GUIDANCE = 24, 6.0  # the pipeline's max_sequence_length (256) and guidance_scale (6.0)


def _call(pipe, x_t, sigma, text, mask, pooled):
    # HunyuanVideoPipeline.__call__: the scheduler's timestep (1000 sigma) in the float32 latents' dtype, the
    # guidance 1000 guidance_scale in the transformer's dtype, the mask cast to it
    return pipe.transformer(hidden_states=x_t, timestep=torch.full((1,), 1000.0 * sigma), encoder_hidden_states=text,
                            encoder_attention_mask=mask.float(), pooled_projections=pooled,
                            guidance=torch.tensor([GUIDANCE]) * 1000.0, return_dict=False)[0]


def _prompt(pipe, text, length):
    embeds, pooled, mask = pipe.encode_prompt(text, prompt_template=DEFAULT_PROMPT_TEMPLATE, max_sequence_length=length,
                                              device="cpu")
    return embeds, mask, pooled


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_prompt(pipe, caption, CAPTION_TOKENS))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    # the expression as the whole Llama caption (no padding) beside the caption's CLIP vector: the token refiner
    # mixes its rows alone
    _, _, pooled = _prompt(pipe, caption, CAPTION_TOKENS)
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression, torch.ones(expression.shape[:2]), pooled))
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(2, (attn.heads, -1)))
    query = apply_rotary_emb(query, image["image_rotary_emb"], sequence_dim=1)  # video tokens only
    key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"]).unflatten(2, (attn.heads, -1)))
    return query[0], key[0]


def stock_expression(pipe, text, length):
    # HunyuanVideoPipeline.encode_prompt: the template, 95 tokens cropped, hidden layer -3, a prompt exactly
    # `length` tokens long
    embeds, mask, _ = _prompt(pipe, text, length)
    assert mask.all(), "the prompt was padded"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # HunyuanVideoImageToVideoPipeline: its video_processor's pixels of the image, as one frame (prepare_latents'
    # unsqueeze(2)), the VAE's mode ("argmax"), times its vae_scaling_factor (the VAE config's scaling_factor)
    pixels = pipe.video_processor.preprocess(image, height, width).unsqueeze(2)
    return retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax") * pipe.vae.config.scaling_factor


ENTRY = ContractEntry(
    name="hunyuanvideo",
    extractor_class=HunyuanVideoExtractor,
    pipeline_class=HunyuanVideoPipeline,
    save=lambda folder, depth: save_tiny_hunyuanvideo(folder, layers=depth, single_layers=depth),
    settings=dict(torch_dtype="float32", height=48, width=80, clip_frames=5, caption_max_tokens=CAPTION_TOKENS,
                  guidance_scale=GUIDANCE),
    image_size=(100, 60),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=lambda transformer, monkeypatch: latent_rope_off(transformer, monkeypatch, cells=4),  # 1 x 2 x 2
    stock_latent=stock_latent,
    # HunyuanVideoPipeline: sigmas linspace(1, 0, N + 1)[:-1] through the scheduler's static shift, its timesteps
    # (1000 sigma) told as they are
    scheduler_levels=lambda pipe: flow_levels(pipe, 1.0, sigmas=np.linspace(1.0, 0.0, 9)[:-1]),
    stock_expression=stock_expression,
    reference_hooks=reference_hooks,  # the token refiner's attention is not a block
    depth_observations=lambda depth: 2 * depth,
)
