"""PixArt-Sigma under the contract: the stock `PixArtSigmaPipeline.__call__` and `AttnProcessor2_0` of
each block's attn2 (image queries, the caption's T5 keys, its padding masked by a bias).

PixArt is variance preserving with eps-prediction: the stock model is called at a timestep of the
pipeline's own DPM-Solver schedule on the VP state of the flow state's signal-to-noise ratio
(`vp_state`: a and b that timestep's alphas_cumprod's), and its eps (the first half of its output,
as the pipeline keeps it) is read as the flow velocity eps - x0 with x0 = (x - b eps) / a."""

import torch
from diffusers import PixArtSigmaPipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3_img2img import retrieve_latents

from refam.extractors.pixart import PixArtSigmaExtractor
from refam.testing.tiny_pixart import save_tiny_pixart
from tests.extractors.contract.contract import ContractEntry, block_inputs, vp_levels, vp_state

CAPTION_TOKENS = 16


def _call(pipe, x, timestep, text, mask):
    # PixArtSigmaPipeline.__call__: the scheduler's int64 timestep, the caption's attention mask, no size conditions
    return pipe.transformer(x, encoder_hidden_states=text, encoder_attention_mask=mask,
                            timestep=torch.tensor([int(timestep)]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                            return_dict=False)[0]


def _caption(pipe, caption):
    embeds, mask, _, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, clean_caption=False,
                                            max_sequence_length=CAPTION_TOKENS)
    return embeds, mask


def stock_velocity(pipe, x_t, sigma, grid, caption):
    x, timestep, a, b = vp_state(pipe, x_t, sigma)
    eps = _call(pipe, x, timestep, *_caption(pipe, caption)).chunk(2, dim=1)[0].double()  # the pipeline drops the variance
    x = x.double()
    return (eps - (x - b * eps) / a).float()


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    x, timestep, _, _ = vp_state(pipe, x_t, sigma)
    attn = pipe.transformer.transformer_blocks[0].attn2
    # BasicTransformerBlock (ada_norm_single) calls attn2(hidden_states, encoder_hidden_states=projected text,
    # attention_mask=the caption's bias): no norm before it, no positions, no QK norm
    image = block_inputs(attn, lambda: _call(pipe, x, timestep, *_caption(pipe, caption)))
    text = block_inputs(attn, lambda: _call(pipe, x, timestep, expression, torch.ones(expression.shape[:2])))
    query = attn.to_q(image["args"][0]).unflatten(-1, (attn.heads, -1))
    key = attn.to_k(text["encoder_hidden_states"]).unflatten(-1, (attn.heads, -1))
    return query[0], key[0]


def positions_off(transformer, monkeypatch):
    """PixArt's only positions: the sin-cos table PatchEmbed adds to image tokens (None: none added)."""
    monkeypatch.setattr(transformer.pos_embed, "pos_embed", None)


def stock_expression(pipe, text, length):
    # the pipeline's T5 rows (masked encoder) of a prompt exactly `length` tokens long
    return pipe.encode_prompt(text, do_classifier_free_guidance=False, clean_caption=False, max_sequence_length=length)[0][0]


def stock_latent(pipe, image, height, width):
    # diffusers has no image-conditioned PixArt pipeline: the inverse of PixArtSigmaPipeline's decode
    # (latents / scaling_factor, no shift factor), on its image_processor's pixels, the VAE's mode
    pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    return retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax") * pipe.vae.config.scaling_factor


ENTRY = ContractEntry(
    name="pixart",
    extractor_class=PixArtSigmaExtractor,
    pipeline_class=PixArtSigmaPipeline,
    save=lambda folder, depth: save_tiny_pixart(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True, caption_max_tokens=CAPTION_TOKENS),
    image_size=(120, 70),  # a 5 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # PixArtSigmaPipeline: the DPM-Solver's linspace timesteps (int64), told as they are
    scheduler_levels=lambda pipe: vp_levels(pipe),
    stock_expression=stock_expression,
    stock_sigma=lambda pipe: vp_levels(pipe)[3][0],
    velocity_exact=False,
)
