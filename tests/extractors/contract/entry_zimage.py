"""Z-Image under the contract: the stock `ZImagePipeline.__call__` and `ZSingleStreamAttnProcessor`."""

import math

import torch
from diffusers import ZImagePipeline
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF
from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas
from diffusers.pipelines.z_image.pipeline_z_image_img2img import retrieve_latents

from refam.extractors.zimage import ZImageExtractor
from refam.testing.tiny_zimage import save_tiny_zimage
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels

CAPTION_TOKENS = 32


def _call(pipe, x_t, sigma, rows):
    # ZImagePipeline.__call__: timestep (1000 - t) / 1000 of the scheduler's t = 1000 sigma, the latent as a
    # list of [C, 1, h, w], the prompt as a list of its real rows, the output stacked and squeezed
    timestep = (1000 - torch.full((1,), 1000.0 * sigma)) / 1000
    out = pipe.transformer([x_t[0].unsqueeze(1)], timestep, [rows], return_dict=False)[0]
    return torch.stack([t.float() for t in out]).squeeze(2)


def stock_velocity(pipe, x_t, sigma, grid, caption):
    rows, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, max_sequence_length=CAPTION_TOKENS)
    return _call(pipe, x_t, sigma, rows[0])


def _rotated(x, freqs):
    # ZSingleStreamAttnProcessor's apply_rotary_emb: consecutive pairs as complex numbers times freqs
    return torch.view_as_real(torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs.unsqueeze(2)).flatten(3)


def _vectors(attn, inputs, projection, norm):
    x = norm(projection(inputs["args"][0]).unflatten(-1, (attn.heads, -1)))
    return _rotated(x, inputs["freqs_cis"])[0]


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    # the unified stream is [image padded to a multiple of 32 | caption padded alike]
    attn = pipe.transformer.layers[0].attention
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression[0]))  # the expression as the caption
    num_image = math.prod(grid)
    start = num_image + (-num_image) % SEQ_MULTI_OF
    query = _vectors(attn, image, attn.to_q, attn.norm_q)[:num_image]
    key = _vectors(attn, text, attn.to_k, attn.norm_k)[start : start + expression.shape[1]]
    return query, key


def positions_off(transformer, monkeypatch):
    half = transformer.config.dim // transformer.config.n_heads // 2
    monkeypatch.setattr(transformer, "rope_embedder", lambda ids: torch.ones(ids.shape[0], half, dtype=torch.complex64))


def stock_expression(pipe, text, length):
    # ZImagePipeline._encode_prompt: Qwen3's chat template, the second-to-last layer, the real tokens
    rows, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False)
    assert rows[0].shape[0] == length, f"the pipeline reads {rows[0].shape[0]} rows, the extractor {length}"
    return rows[0]


def stock_latent(pipe, image, height, width):
    # ZImageImg2ImgPipeline.prepare_latents: the VAE's latent (its mode where it samples), then
    # (z - shift_factor) * scaling_factor
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax")
    return (latent - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


def scheduler_levels(pipe):
    # ZImagePipeline: the scheduler's schedule of its default sigmas, timestep (1000 - t) / 1000
    levels = flow_levels(pipe, 1000.0, sigmas=get_default_z_image_sigmas(8), mu=0.8)
    return [(sigma, 1.0 - told) for sigma, told in levels]


ENTRY = ContractEntry(
    name="zimage",
    extractor_class=ZImageExtractor,
    pipeline_class=ZImagePipeline,
    save=lambda folder, depth: save_tiny_zimage(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=128, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    # a 4 x 16 token grid: 64 image tokens, a multiple of 32, so the image needs no padding rows and the
    # reference's image-only calls (the noise refiner) are told apart from the joint ones by their length
    image_size=(256, 64),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    scheduler_levels=scheduler_levels,
    stock_expression=stock_expression,
)
