"""Mochi 1 under the contract: the stock `MochiPipeline.__call__` and `MochiAttnProcessor2_0`."""

import torch
from diffusers import MochiPipeline
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

from refam.extractors.mochi import MochiExtractor
from tests.extractors.contract.contract import ContractEntry, flow_levels, block_inputs
from refam.testing.tiny_mochi import save_tiny_mochi


def _call(pipe, x_t, sigma, text, mask):
    # MochiPipeline.__call__: timestep t = 1000 (1 - sigma) (invert_sigmas), in the latents' dtype
    return pipe.transformer(hidden_states=x_t, encoder_hidden_states=text, encoder_attention_mask=mask,
                            timestep=torch.full((1,), 1000.0 * (1.0 - sigma)), return_dict=False)[0]


def _caption(pipe, caption):
    embeds, mask, _, _ = pipe.encode_prompt(prompt=caption, do_classifier_free_guidance=False, max_sequence_length=16)
    return embeds, mask


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_caption(pipe, caption))


def _rope(x, cos, sin):
    # MochiAttnProcessor2_0's rotation of interleaved (even, odd) pairs
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    embeds, mask = _caption(pipe, caption)
    attn = pipe.transformer.transformer_blocks[0].attn1
    # text tokens have no RoPE; the expression's tokens ride after the caption as masked text (the
    # caption pooler and the modulation see the caption only), so read them from the same call
    text = torch.cat([embeds, expression], dim=1)
    seen = block_inputs(attn, lambda: _call(pipe, x_t, sigma, text, torch.cat([mask, mask.new_zeros(1, expression.shape[1])], 1)))
    query = attn.norm_q(attn.to_q(seen["hidden_states"]).unflatten(2, (attn.heads, -1)))
    query = _rope(query, *seen["image_rotary_emb"])
    key = attn.norm_added_k(attn.add_k_proj(seen["encoder_hidden_states"]).unflatten(2, (attn.heads, -1)))
    return query[0], key[0, embeds.shape[1]:]


def positions_off(transformer, monkeypatch):
    monkeypatch.setattr(transformer.pos_frequencies, "data", torch.zeros_like(transformer.pos_frequencies))


def reference_hooks(transformer, valid):
    # MochiAttnProcessor2_0 attends to the text tokens its attention_mask keeps: the block's
    # encoder_attention_mask, which also drives the caption pooler; only the attention is told to keep
    # the branch's tokens (the last K L of the text), so the pooler still sees the caption alone. The
    # stock processor packs the kept tokens' outputs right after the video's, [real caption | branch
    # | zeros], and leaves zeros (to_add_out's bias after it) at the rest: the branch's rows go back
    # to the end, behind the caption's padding
    branch = valid.numel()

    def keep_branch(module, args, kwargs):
        mask = kwargs["attention_mask"].clone()
        mask[:, -branch:] = True
        return args, {**kwargs, "attention_mask": mask}

    def unpack(module, args, kwargs, out):
        video, text = out
        real = int(kwargs["attention_mask"][0].sum()) - branch  # the caption's real tokens
        return video, torch.cat([text[:, :real], text[:, real:].roll(-branch, dims=1)], dim=1)

    attentions = [block.attn1 for block in transformer.transformer_blocks]
    return ([a.register_forward_pre_hook(keep_branch, with_kwargs=True) for a in attentions]
            + [a.register_forward_hook(unpack, with_kwargs=True) for a in attentions])


def stock_expression(pipe, text, length):
    # the pipeline's T5 rows of a prompt exactly `length` tokens long
    return pipe.encode_prompt(prompt=text, do_classifier_free_guidance=False, max_sequence_length=length)[0][0]


def stock_latent(pipe, image, height, width):
    # No stock pipeline encodes into Mochi's latent space (MochiPipeline is text-to-video only): this
    # inverts MochiPipeline.__call__'s decoding, latents * latents_std / scaling_factor + latents_mean,
    # on the VAE's mode of a one-frame video [1, C, 1, H, W] from video_processor.preprocess
    pixels = pipe.video_processor.preprocess(image, height=height, width=width).unsqueeze(2)
    latent = pipe.vae.encode(pixels).latent_dist.mode()
    config = pipe.vae.config
    mean, std = (torch.tensor(v).view(1, -1, 1, 1, 1).to(latent.dtype) for v in (config.latents_mean, config.latents_std))
    return (latent - mean) * config.scaling_factor / std


ENTRY = ContractEntry(
    name="mochi",
    extractor_class=MochiExtractor,
    pipeline_class=MochiPipeline,
    save=lambda folder, depth: save_tiny_mochi(folder, layers=depth),
    settings=dict(torch_dtype="float32", height=48, width=80, clip_frames=7, caption_max_tokens=16),
    image_size=(100, 60),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # MochiPipeline: linear_quadratic_schedule through the inverted-sigma scheduler, its timesteps as they are
    scheduler_levels=lambda pipe: flow_levels(pipe, sigmas=linear_quadratic_schedule(8, 0.025)),
    stock_expression=stock_expression,
    reference_hooks=reference_hooks,
)
