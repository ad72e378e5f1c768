"""CogView4 under the contract: the stock `CogView4Pipeline.__call__` and `CogView4AttnProcessor` (one set of
projections for [text | image], RoPE on image tokens only, no mask).

The pipeline tells the transformer the unshifted timesteps of its schedule while the scheduler noises the
latent to their shifted levels (a dynamic shift of the image's token count), so the stock checks run at a
level of the pipeline's own schedule for the contract image (`stock_sigma`) and tell its timestep, read off
the scheduler: nothing of refam's inversion is copied. The extractor's inversion lands within float32's
rounding of it, not always on the same float, hence `velocity_exact=False` (the branch still leaves the
extractor's own velocity bit for bit)."""

import numpy as np
import torch
from diffusers import CogView4ControlPipeline, CogView4Pipeline
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift

from refam.extractors.cogview4 import CogView4Extractor
from refam.testing.tiny_cogview4 import save_tiny_cogview4
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels, latent_rope_off

RESOLUTION, STEPS = 96, 8
IMAGE_TOKENS = 5 * 8  # the contract image (120 x 70) at RESOLUTION with keep_aspect: 80 x 128 pixels


def _levels(pipe, tokens):
    # CogView4Pipeline.__call__'s schedule: timesteps linspace(1000, 1, N) as integers, sigmas t / 1000, mu of
    # the image's tokens (its own calculate_shift), both handed to the scheduler: the timesteps stay unshifted
    config = pipe.scheduler.config
    timesteps = np.linspace(config.num_train_timesteps, 1.0, STEPS).astype(np.int64).astype(np.float32)
    mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("base_shift", 0.25),
                         config.get("max_shift", 0.75))
    return flow_levels(pipe, 1.0, timesteps=timesteps, sigmas=timesteps / config.num_train_timesteps, mu=mu)


def _call(pipe, x_t, sigma, grid, text):
    # the schedule's timestep at this level, the image's pixel size as original and target size, crop (0, 0)
    timestep = [t for level, t in _levels(pipe, grid[1] * grid[2]) if abs(level - sigma) < 1e-9]
    assert timestep, f"sigma {sigma} is not a level of the pipeline's schedule"
    size = torch.tensor([[grid[1] * 16.0, grid[2] * 16.0]])
    return pipe.transformer(hidden_states=x_t, encoder_hidden_states=text, timestep=torch.tensor(timestep),
                            original_size=size, target_size=size, crop_coords=torch.zeros(1, 2), return_dict=False)[0]


def _prompt(pipe, text):
    return pipe.encode_prompt(text, do_classifier_free_guidance=False, device="cpu")[0]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, grid, _prompt(pipe, caption))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn1
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, expression))  # the expression as the caption
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(2, (attn.heads, -1)))
    query = apply_rotary_emb(query, image["image_rotary_emb"], use_real_unbind_dim=-2, sequence_dim=1)
    key = attn.norm_k(attn.to_k(text["encoder_hidden_states"]).unflatten(2, (attn.heads, -1)))
    return query[0], key[0]


def stock_expression(pipe, text, length):
    # CogView4Pipeline._get_glm_embeds: "[gMASK]<sop>" and the text, left-padded to a multiple of 16 with no
    # mask, hidden layer -2: every row enters the transformer
    return _prompt(pipe, text)[0]


def stock_latent(pipe, image, height, width):
    # CogView4ControlPipeline: its prepare_image's pixels, the VAE (its mode here) times scaling_factor, no shift
    pixels = CogView4ControlPipeline.prepare_image(pipe, image, width, height, 1, 1, "cpu", pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


ENTRY = ContractEntry(
    name="cogview4",
    extractor_class=CogView4Extractor,
    pipeline_class=CogView4Pipeline,
    save=lambda folder, depth: save_tiny_cogview4(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=RESOLUTION, keep_aspect=True),
    image_size=(120, 70),  # a 5 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=lambda transformer, monkeypatch: latent_rope_off(transformer, monkeypatch, cells=4),  # 2 x 2 a token
    stock_latent=stock_latent,
    # the schedule at a RESOLUTION x RESOLUTION image's tokens, the extractor's `timestep(sigma)` count
    scheduler_levels=lambda pipe: _levels(pipe, (RESOLUTION // 16) ** 2),
    stock_expression=stock_expression,
    stock_sigma=lambda pipe: _levels(pipe, IMAGE_TOKENS)[3][0],
    velocity_exact=False,
)
