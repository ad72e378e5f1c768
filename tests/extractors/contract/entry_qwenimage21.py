"""Qwen-Image 2.1 under the contract: the stock `QwenImage21Pipeline.__call__`, `QwenImage21Rope` and the
block-causal attention of `QwenImage21AttnProcessor` (text causal, never seeing the image: `causal_text`)."""

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import QwenImage21Pipeline
from diffusers.models.transformers.transformer_qwenimage21 import _qwenimage21_prepare_qkv, apply_rotary_emb_qwen
from diffusers.pipelines.qwenimage21.pipeline_qwenimage21 import calculate_shift

from refam.extractors.qwenimage21 import QwenImage21Extractor
from refam.testing.tiny_qwenimage21 import save_tiny_qwenimage21
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels


def _call(pipe, x_t, sigma, grid, text, text_slots, mask=None):
    # QwenImage21Pipeline.__call__: timestep / 1000 of the scheduler's 1000 sigma, the prompt's image_pad_mask with
    # one slot per 2 x 2 target latents appended, img_shapes [(1, rows, cols)], the target image's rows of the output
    img_mask = torch.cat([text_slots, text_slots.new_ones(1, x_t.shape[1] // 4)], dim=1)
    out = pipe.transformer(
        hidden_states=x_t, timestep=torch.full((1,), sigma), encoder_hidden_states=text,
        encoder_hidden_states_mask=mask, img_shapes=[[grid]], img_mask=img_mask, return_dict=False,
    )[0]
    return out[:, -x_t.shape[1]:]


def stock_velocity(pipe, x_t, sigma, grid, caption):
    embeds, mask, slots = pipe.encode_prompt(caption)
    return _call(pipe, x_t, sigma, grid, embeds, slots, mask)


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    # the image queries of the stock forward with the caption; the expression's keys are the text keys of the
    # stock forward with the expression as the caption (its tokens see only their own earlier ones)
    attn = pipe.transformer.transformer_blocks[0].attn
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    slots = torch.zeros(1, expression.shape[1], dtype=torch.bool)
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, expression, slots))
    head_dim = attn.inner_dim // attn.heads

    def rotated(inputs, projection, norm):
        x = norm(projection(inputs["hidden_states"]).unflatten(-1, (-1, head_dim)))
        return apply_rotary_emb_qwen(x, inputs["rotary_emb"], use_real=False)[0]

    return rotated(image, attn.to_q, attn.norm_q)[-x_t.shape[1]:], rotated(text, attn.to_k, attn.norm_k)[: expression.shape[1]]


class _Undo:
    def __init__(self, undo):
        self.remove = undo


class _OneCallPrefill:
    """The prefill's attention in one call on torch's SDPA over the dense block-causal mask, the rule of
    `build_qwenimage21_block_causal_mask` ((q >= kv) or the same image block), as `QwenImage21FlexAttnProcessor`
    runs it in one flex call; the stock `QwenImage21AttnProcessor` splits the same attention into a call per
    segment, which the reference's masked SDPA could not read as one block."""

    def __init__(self, allowed: list):
        self.allowed = allowed  # [the [S, S] mask], filled by the RoPE hook for each forward

    def __call__(self, attn, hidden_states, attention_mask=None, rotary_emb=None, **unused):
        query, key, value, _ = _qwenimage21_prepare_qkv(attn, hidden_states, rotary_emb, None, None, None)
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (query, key, value)), attn_mask=self.allowed[0])
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3).type_as(query)))


def reference_hooks(transformer, valid):
    # QwenImage21Rope numbers the joint text [expressions | caption] 0, 1, ... and freezes the image's frame
    # axis after it: each expression token j is given the rotation of a caption's token j (a caption of the
    # expression's length before the image), the caption and image those of [caption | image] alone
    k, length = valid.shape
    allowed = []

    def as_captions(module, args, kwargs, out):
        shapes, slots = args
        image_ids = transformer.build_token_metadata(slots, shapes)[0]
        order = torch.arange(slots.shape[0], device=slots.device)
        allowed[:] = [(order[:, None] >= order[None]) | ((image_ids[:, None] == image_ids[None]) & (image_ids[:, None] >= 0))]
        alone = torch.cat([slots.new_zeros(length), slots.new_ones(int(slots.sum()))])
        return torch.cat([module.forward(shapes, alone, **kwargs)[:length].repeat(k, 1),
                          module.forward(shapes, slots[k * length:], **kwargs)])

    attns = [block.attn for block in transformer.transformer_blocks]
    saved = [attn.processor for attn in attns]
    for attn in attns:
        attn.processor = _OneCallPrefill(allowed)

    def restore():
        for attn, processor in zip(attns, saved):
            attn.processor = processor

    return [transformer.pos_embed.register_forward_hook(as_captions, with_kwargs=True), _Undo(restore)]


class _NoRope(torch.nn.Module):
    """The identity rotation (complex ones) for every token of the joint sequence."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs

    def forward(self, img_shapes, image_pad_mask, device=None):
        return torch.ones(image_pad_mask.shape[-1], self.pairs, dtype=torch.complex64, device=device)


def positions_off(transformer, monkeypatch):
    monkeypatch.setattr(transformer, "pos_embed", _NoRope(transformer.config.attention_head_dim // 2))


def stock_expression(pipe, text, length):
    # QwenImage21Pipeline.encode_prompt: the prompt in its template, Qwen3-VL's last layer before its norm, the
    # system turn dropped
    embeds, _, _ = pipe.encode_prompt(text)
    assert embeds.shape[1] == length, f"the pipeline reads {embeds.shape[1]} rows, the extractor {length}"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # QwenImage21Pipeline with a condition image: RGBA, image_processor.preprocess as a one-frame video,
    # _encode_vae_image (the mode, (z - latents_mean) / latents_std), _pack_latents (a token per latent cell)
    pixels = pipe.image_processor.preprocess(image.convert("RGBA"), width=width, height=height).unsqueeze(2)
    latent = pipe._encode_vae_image(pixels, generator=None)
    return pipe._pack_latents(latent, 1, latent.shape[1], latent.shape[3], latent.shape[4])


def scheduler_levels(pipe):
    # QwenImage21Pipeline: linspace(1, 1/N, N) at the mu of its calculate_shift (here of 4096 tokens), timestep / 1000
    config = pipe.scheduler.config
    mu = calculate_shift(4096, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    return flow_levels(pipe, 1000.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=mu)


ENTRY = ContractEntry(
    name="qwenimage21",
    extractor_class=QwenImage21Extractor,
    pipeline_class=QwenImage21Pipeline,
    save=lambda folder, depth: save_tiny_qwenimage21(folder, layers=depth),
    settings=dict(torch_dtype="float32", resolution=96, keep_aspect=True),
    image_size=(120, 70),  # a 4 x 8 token grid
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    scheduler_levels=scheduler_levels,
    stock_expression=stock_expression,
    patch=(1, 1, 1),
    reference_hooks=reference_hooks,
    causal_text=True,
)
