"""CogVideoX under the contract: the stock `CogVideoXPipeline.__call__` and `CogVideoXAttnProcessor2_0`,
on three variants. 5b: 3D RoPE on the video tokens, fitted into the transformer's base grid. 1.5:
tokens of 2 x 2 x 2 latent cells (an image's one latent frame is repeated in front), RoPE on integer
rows and columns ("slice" grid). 2b: no RoPE, but a sin-cos position table added to [226 caption
tokens (zeros) | video] in the patch embedding, which fixes the caption's length.

CogVideoX is variance preserving with v-prediction: the flow state at sigma, (1 - sigma) x0 +
sigma eps, is r times the VP state of the same signal-to-noise ratio, sqrt(ab) x0 + sqrt(1 - ab) eps
with sqrt(ab) = (1 - sigma) / r, sqrt(1 - ab) = sigma / r. The stock model is called on that state
at the timestep whose `alphas_cumprod` (the pipeline's scheduler's) is that ab, and its v =
sqrt(ab) eps - sqrt(1 - ab) x0 is read as the flow velocity eps - x0 = (b - a) x + (a + b) v. The
check runs at a timestep of the scheduler's own schedule, a and b its alphas_cumprod's there, so that
nothing of refam's interpolation between timesteps is copied here."""

import torch
from diffusers import CogVideoXPipeline
from diffusers.pipelines.cogvideo.pipeline_cogvideox_video2video import retrieve_latents

from refam.extractors.cogvideox import CogVideoX15Extractor, CogVideoXExtractor
from tests.extractors.contract.contract import ContractEntry, block_inputs, vp_levels, vp_state
from refam.testing.tiny_cogvideox import save_tiny_cogvideox


def call(pipe, x, timestep, text, rope_size):
    # CogVideoXPipeline.__call__: RoPE from _prepare_rotary_positional_embeddings(height, width, latent frames)
    rope = None
    if pipe.transformer.config.use_rotary_positional_embeddings:
        rope = pipe._prepare_rotary_positional_embeddings(*rope_size, x.shape[1], "cpu")
    return pipe.transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.full((1,), timestep),
                            image_rotary_emb=rope, return_dict=False)[0]


def caption_embeds(pipe, caption, length):
    return pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False, max_sequence_length=length)[0]


def stock_expression(pipe, text, length):
    # the pipeline's T5 rows (unmasked) of a prompt exactly `length` tokens long
    return caption_embeds(pipe, text, length)[0]


def stock_latent(pipe, image, height, width):
    # CogVideoXVideoToVideoPipeline.prepare_latents on a one-frame video [1, C, 1, H, W] from
    # video_processor.preprocess: the VAE's latent (its mode where it samples) as [B, F, C, H, W], times
    # vae_scaling_factor_image (the inverse of decode_latents; CogVideoXImageToVideoPipeline's
    # invert_scale_latents concerns 1.5's image conditioning, not the text-to-video latent). 1.5
    # (patch_size_t 2): CogVideoXImageToVideoPipeline.prepare_latents puts the first latent frame again
    # in front of an odd count
    pixels = pipe.video_processor.preprocess(image, height=height, width=width).unsqueeze(2)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax").permute(0, 2, 1, 3, 4)
    latent = pipe.vae_scaling_factor_image * latent
    patch_t = pipe.transformer.config.patch_size_t
    if patch_t is not None:
        latent = torch.cat([latent[:, : latent.size(1) % patch_t], latent], dim=1)
    return latent


def entry(name, variant, caption_length):
    extractor_class, clip_frames = (CogVideoX15Extractor, 9) if variant == "1.5" else (CogVideoXExtractor, 5)

    def stock_velocity(pipe, x_t, sigma, grid, caption):
        x, timestep, a, b = vp_state(pipe, x_t, sigma)
        v = call(pipe, x, timestep, caption_embeds(pipe, caption, caption_length), (grid[1] * 16, grid[2] * 16))
        return (b - a) * x.float() + (a + b) * v.float()

    def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
        x, timestep, _, _ = vp_state(pipe, x_t, sigma)
        attn = pipe.transformer.transformer_blocks[0].attn1
        # the expression read as the first tokens of a caption (2b's position table needs the full
        # caption length, and gives every text token position zero); text and video tokens share
        # to_q/to_k and norm_q/norm_k; RoPE rotates the video tokens only
        text = torch.cat([expression, caption_embeds(pipe, caption, caption_length)], dim=1)
        if not pipe.transformer.config.use_rotary_positional_embeddings:
            text = text[:, : pipe.transformer.config.max_text_seq_length]
        seen = block_inputs(attn, lambda: call(pipe, x, timestep, text, (grid[1] * 16, grid[2] * 16)))
        query = attn.norm_q(attn.to_q(seen["hidden_states"]).unflatten(2, (attn.heads, -1)))
        if seen["image_rotary_emb"] is not None:
            query = apply_rope(query, *seen["image_rotary_emb"])
        key = attn.norm_k(attn.to_k(seen["encoder_hidden_states"]).unflatten(2, (attn.heads, -1)))
        return query[0], key[0, : expression.shape[1]]

    return ContractEntry(
        name=name,
        extractor_class=extractor_class,
        pipeline_class=CogVideoXPipeline,
        save=lambda folder, depth: save_tiny_cogvideox(folder, variant=variant, layers=depth),
        settings=dict(torch_dtype="float32", height=48, width=80, clip_frames=clip_frames, caption_max_tokens=caption_length),
        image_size=(100, 60),
        stock_velocity=stock_velocity,
        block0_vectors=block0_vectors,
        positions_off=positions_off,
        stock_latent=stock_latent,
        # CogVideoXPipeline: the DDIM scheduler's trailing timesteps, told as they are
        scheduler_levels=lambda pipe: vp_levels(pipe),
        stock_expression=stock_expression,
        stock_sigma=lambda pipe: vp_levels(pipe)[3][0],
        velocity_exact=False,
        patch=(2 if variant == "1.5" else 1, 2, 2),
    )


def apply_rope(x, cos, sin):
    # apply_rotary_emb(use_real_unbind_dim=-1) on [B, N, H, D]: interleaved (real, imaginary) pairs
    real, imaginary = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(-2)
    return (x.float() * cos[None, :, None] + rotated * sin[None, :, None]).to(x.dtype)


def positions_off(transformer, monkeypatch):
    # 5b / 1.5: the RoPE the pipeline hands the transformer becomes the identity; 2b: no sin-cos table added
    forward = transformer.forward

    def without_rope(*args, image_rotary_emb=None, **kwargs):
        if image_rotary_emb is not None:
            image_rotary_emb = tuple((torch.ones_like if i == 0 else torch.zeros_like)(t) for i, t in enumerate(image_rotary_emb))
        return forward(*args, image_rotary_emb=image_rotary_emb, **kwargs)

    monkeypatch.setattr(transformer, "forward", without_rope)
    monkeypatch.setattr(transformer.patch_embed, "use_positional_embeddings", False)


ENTRIES = [entry("cogvideox", "5b", 16), entry("cogvideox_1_5", "1.5", 16), entry("cogvideox_2b", "2b", 226)]
