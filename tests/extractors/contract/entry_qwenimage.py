"""Qwen-Image under the contract: the stock `QwenImagePipeline.__call__` and `QwenDoubleStreamAttnProcessor2_0`."""

import numpy as np
import torch
from diffusers import QwenImagePipeline
from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen
from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img import retrieve_latents

from refam.extractors.qwenimage import QwenImageExtractor
from tests.extractors.contract.contract import ContractEntry, flow_levels, block_inputs
from refam.testing.tiny_qwenimage import save_tiny_qwenimage


def _call(pipe, x_t, sigma, grid, text, mask):
    # QwenImagePipeline.__call__: timestep / 1000 of the scheduler's 1000 sigma, the caption's mask,
    # img_shapes [(1, rows, cols)] per item
    return pipe.transformer(
        hidden_states=x_t, timestep=torch.full((1,), sigma), encoder_hidden_states=text,
        encoder_hidden_states_mask=mask, img_shapes=[[grid]], return_dict=False,
    )[0]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, grid, *pipe.encode_prompt(caption, max_sequence_length=32))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, expression, None))  # the expression as the caption
    head_dim = attn.inner_dim // attn.heads
    query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(-1, (-1, head_dim)))
    query = apply_rotary_emb_qwen(query, image["image_rotary_emb"][0], use_real=False)
    key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"]).unflatten(-1, (-1, head_dim)))
    key = apply_rotary_emb_qwen(key, text["image_rotary_emb"][1], use_real=False)
    return query[0], key[0]


def reference_hooks(transformer, valid):
    # QwenEmbedRope numbers the text stream's tokens 0, 1, ... after the image's positions: expression
    # token j is read as caption token j (the positions block0_vectors checks), so the K expressions
    # get the table's rows 0..L-1 each and the caption its own rows 0..Lc-1, as a caption alone
    k, length = valid.shape

    def as_captions(module, args, kwargs, out):
        image, text = out
        caption = text.shape[0] - k * length
        return image, torch.cat([text[:length].repeat(k, 1), text[:caption]])

    return [transformer.pos_embed.register_forward_hook(as_captions, with_kwargs=True)]


class _NoRope(torch.nn.Module):
    """The identity rotation (complex ones) for every image and text token."""

    def __init__(self, head_dim):
        super().__init__()
        self.half = head_dim // 2

    def forward(self, video_fhw, device=None, max_txt_seq_len=None):
        frames, rows, cols = video_fhw[0][0]
        ones = lambda n: torch.ones(n, self.half, dtype=torch.complex64, device=device)  # noqa: E731
        return ones(frames * rows * cols), ones(int(max_txt_seq_len))


def positions_off(transformer, monkeypatch):
    monkeypatch.setattr(transformer, "pos_embed", _NoRope(transformer.config.attention_head_dim))


def stock_expression(pipe, text, length):
    # QwenImagePipeline.encode_prompt: the prompt in its template, the system prefix dropped
    embeds, _ = pipe.encode_prompt(text)
    assert embeds.shape[1] == length, f"the pipeline reads {embeds.shape[1]} rows, the extractor {length}"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # QwenImageImg2ImgPipeline: a one-frame video [1, C, 1, H, W] from image_processor.preprocess,
    # _encode_vae_image's (z - latents_mean) * latents_std with latents_std = 1 / the config's (the
    # VAE's mode where it samples; QwenImageEditPipeline takes the mode but divides by the std, an
    # ulp away), _pack_latents (2 x 2 cells per token)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).unsqueeze(2)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax")
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latent.dtype)
    latents_std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1).to(latent.dtype)
    latent = (latent - mean) * latents_std
    return pipe._pack_latents(latent, 1, latent.shape[1], latent.shape[3], latent.shape[4])


ENTRY = ContractEntry(
    name="qwenimage",
    extractor_class=QwenImageExtractor,
    pipeline_class=QwenImagePipeline,
    save=lambda folder, depth: save_tiny_qwenimage(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=32),
    image_size=(120, 70),  # a 5 x 8 token grid: odd rows, so MSRoPE's centred rows are uneven
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # QwenImagePipeline: the scheduler's schedule of linspace(1, 1/N, N) at its mu, timestep / 1000
    scheduler_levels=lambda pipe: flow_levels(pipe, 1000.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=0.8),
    stock_expression=stock_expression,
    reference_hooks=reference_hooks,
)
