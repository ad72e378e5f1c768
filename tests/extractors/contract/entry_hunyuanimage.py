"""HunyuanImage 2.1 under the contract: the stock `HunyuanImagePipeline.__call__` and `HunyuanImageAttnProcessor`
(dual- then single-stream blocks); the caption's Qwen rows go through the transformer's token refiner before the
blocks, the blocks mask the caption's padding keys."""

import numpy as np
import torch
from diffusers import HunyuanImagePipeline

from refam.extractors.hunyuanimage import HunyuanImageExtractor
from refam.testing.tiny_hunyuanimage import save_tiny_hunyuanimage
from tests.extractors.contract.contract import ContractEntry, flow_levels, latent_rope_off
from tests.extractors.contract.entry_hunyuanvideo15 import prompt, reference_hooks, refined_block0, stock_expression

CAPTION_TOKENS = 24  # the pipeline's tokenizer_max_length (1000 in the real one): the Qwen rows after the crop


def _call(pipe, x_t, sigma, text, mask, glyph, glyph_mask):
    # HunyuanImagePipeline.__call__ (base model: no guidance embedding, no meanflow): the scheduler's timestep
    # (1000 sigma) in the latents' dtype, the masks as encode_prompt returns them
    return pipe.transformer(hidden_states=x_t, timestep=torch.full((1,), 1000.0 * sigma), encoder_hidden_states=text,
                            encoder_attention_mask=mask, encoder_hidden_states_2=glyph, encoder_attention_mask_2=glyph_mask,
                            return_dict=False)[0]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *prompt(pipe, caption, CAPTION_TOKENS))


def stock_latent(pipe, image, height, width):
    # diffusers has no image-conditioned HunyuanImage 2.1 pipeline (the refiner's has another VAE): the inverse
    # of HunyuanImagePipeline's decode (latents / scaling_factor), on its image_processor's pixels, the VAE's mode
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


ENTRY = ContractEntry(
    name="hunyuanimage",
    extractor_class=HunyuanImageExtractor,
    pipeline_class=HunyuanImagePipeline,
    save=lambda folder, depth: save_tiny_hunyuanimage(folder, layers=depth, single_layers=depth),
    settings=dict(torch_dtype="float32", resolution=192, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    image_size=(120, 70),  # 256 x 160 pixels: a 5 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=refined_block0(_call, CAPTION_TOKENS),
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
