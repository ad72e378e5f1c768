"""Wan 2.1 under the contract: the stock `WanPipeline.__call__` and `WanAttnProcessor` of each block's attn2."""

import torch
from diffusers import WanImageToVideoPipeline, WanPipeline

from refam.extractors.wan import WanExtractor
from tests.extractors.contract.contract import ContractEntry, flow_levels, block_inputs
from refam.testing.tiny_wan import save_tiny_wan


def _call(pipe, x_t, sigma, text):
    # WanPipeline.__call__: timestep = the UniPC scheduler's, int64 floor(1000 sigma) (600 at the contract's 0.6)
    return pipe.transformer(hidden_states=x_t, timestep=torch.tensor([int(1000 * sigma)]),
                            encoder_hidden_states=text, return_dict=False)[0]


def _caption(pipe, caption):
    return pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False, max_sequence_length=16)[0]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, _caption(pipe, caption))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.blocks[0].attn2
    # WanTransformerBlock calls attn2(norm2(video), text states, None, None): no mask, no RoPE
    video = block_inputs(attn, lambda: _call(pipe, x_t, sigma, _caption(pipe, caption)))["args"]
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression))["args"]  # the expression as the caption
    assert video[2] is None and video[3] is None
    query = attn.norm_q(attn.to_q(video[0])).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(text[1])).unflatten(2, (attn.heads, -1))
    return query[0], key[0]


class _NoRope(torch.nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, hidden_states):  # WanRotaryPosEmbed's (cos, sin) [1, N, 1, head_dim] as the identity
        _, _, frames, height, width = hidden_states.shape
        shape = (1, frames * (height // 2) * (width // 2), 1, self.head_dim)
        return torch.ones(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)


def positions_off(transformer, monkeypatch):
    monkeypatch.setattr(transformer, "rope", _NoRope(transformer.config.attention_head_dim))


def stock_expression(pipe, text, length):
    # the pipeline's T5 rows of a prompt exactly `length` tokens long
    return pipe.encode_prompt(prompt=text, do_classifier_free_guidance=False, max_sequence_length=length)[0][0]


def stock_latent(pipe, image, height, width):
    # WanImageToVideoPipeline.prepare_latents' condition for a one-frame video, its own code run on this
    # pipeline (it reads the VAE, its scale factors and expand_timesteps): the VAE's mode of
    # video_processor's pixels, (z - latents_mean) * (1 / latents_std) per channel, returned after
    # vae_scale_factor_temporal channels of frame mask
    pixels = pipe.video_processor.preprocess(image, height=height, width=width)
    channels, spatial = pipe.vae.config.z_dim, pipe.vae_scale_factor_spatial
    noise = torch.zeros(1, channels, 1, height // spatial, width // spatial)  # given, so no random draw
    _, condition = WanImageToVideoPipeline.prepare_latents(pipe, pixels, 1, channels, height, width, num_frames=1,
                                                           dtype=torch.float32, device="cpu", latents=noise)
    return condition[:, pipe.vae_scale_factor_temporal :]


ENTRY = ContractEntry(
    name="wan",
    extractor_class=WanExtractor,
    pipeline_class=WanPipeline,
    save=lambda folder, depth: save_tiny_wan(folder, layers=depth),
    settings=dict(torch_dtype="float32", height=48, width=80, clip_frames=5, caption_max_tokens=16),
    image_size=(100, 60),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # WanPipeline: UniPC's flow sigmas and its int64 timesteps, as they are
    scheduler_levels=lambda pipe: flow_levels(pipe),
    stock_expression=stock_expression,
)
