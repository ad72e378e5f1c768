"""HunyuanVideo 1.5 under the contract: the stock `HunyuanVideo15Pipeline.__call__` (text-to-video) and
`HunyuanVideo15AttnProcessor2_0`; the caption's Qwen rows go through the transformer's token refiner
before the blocks, with a mask over its padding in the refiner and in every block."""

import numpy as np
import torch
from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
from diffusers.models.embeddings import apply_rotary_emb

from refam.extractors.hunyuanvideo15 import HunyuanVideo15Extractor
from refam.testing.tiny_hunyuanvideo15 import save_tiny_hunyuanvideo15
from tests.extractors.contract.contract import (ContractEntry, block_inputs, flow_levels, latent_rope_off,
                                                text_side_attention)

CAPTION_TOKENS = 24  # the pipeline's tokenizer_max_length (1000 in the real one): the Qwen rows after the crop


def _call(pipe, x_t, sigma, text, mask, glyph, glyph_mask):
    # HunyuanVideo15Pipeline.__call__: [latents | zero condition latents | zero mask] on channels
    # (prepare_cond_latents_and_mask), the scheduler's timestep (1000 sigma) in the latents' dtype, zero
    # image embeddings [1, 729, image_embed_dim], the masks as encode_prompt returns them
    x = torch.cat([x_t, *pipe.prepare_cond_latents_and_mask(x_t, x_t.dtype, x_t.device)], dim=1)
    image = torch.zeros(1, pipe.vision_num_semantic_tokens, pipe.vision_states_dim)
    return pipe.transformer(
        hidden_states=x, timestep=torch.full((1,), 1000.0 * sigma), encoder_hidden_states=text,
        encoder_attention_mask=mask, encoder_hidden_states_2=glyph, encoder_attention_mask_2=glyph_mask,
        image_embeds=image, return_dict=False,
    )[0]


def prompt(pipe, text, length):
    """encode_prompt of the Qwen-reading Hunyuan pipelines (1.5, HunyuanImage): (Qwen rows, mask, ByT5 rows, mask)."""
    pipe.tokenizer_max_length = length  # the pipeline pads (and cuts) its Qwen prompt to this after the crop
    return pipe.encode_prompt(text, device="cpu")


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *prompt(pipe, caption, CAPTION_TOKENS))


def refined_block0(call, caption_tokens):
    """`block0_vectors` of a Qwen-reading Hunyuan pipeline whose stock transformer call is `call(pipe, x_t, sigma,
    Qwen rows, mask, ByT5 rows, mask)`: the expression read as the whole Qwen caption (no padding, no glyph
    text), which the token refiner mixes alone; the reordered caption stream starts with its rows."""
    def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
        attn = pipe.transformer.transformer_blocks[0].attn
        image = block_inputs(attn, lambda: call(pipe, x_t, sigma, *prompt(pipe, caption, caption_tokens)))
        length = expression.shape[1]
        _, _, glyph, glyph_mask = prompt(pipe, "", caption_tokens)
        text = block_inputs(attn, lambda: call(pipe, x_t, sigma, expression, torch.ones(1, length), glyph, glyph_mask))
        query = attn.norm_q(attn.to_q(image["hidden_states"]).unflatten(2, (attn.heads, -1)))
        query = apply_rotary_emb(query, image["image_rotary_emb"], sequence_dim=1)  # video or image tokens only
        key = attn.norm_added_k(attn.add_k_proj(text["encoder_hidden_states"][:, :length]).unflatten(2, (attn.heads, -1)))
        return query[0], key[0]

    return block0_vectors


def stock_expression(pipe, text, length):
    # encode_prompt: the template (its system prefix cropped: 1.5's 108 tokens, HunyuanImage's 34), hidden
    # layer -3, a prompt exactly `length` tokens long
    embeds, mask, _, _ = prompt(pipe, text, length)
    assert mask.all(), "the prompt was padded"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # HunyuanVideo15ImageToVideoPipeline._get_image_latents: image_processor.preprocess as a one-frame
    # video, the VAE's mode, times scaling_factor
    return HunyuanVideo15ImageToVideoPipeline._get_image_latents(pipe.vae, pipe.video_processor, image, height, width, "cpu")


def reference_hooks(transformer, valid):
    # the token refiner's own attention (the caption's, and the branch's as captions) is not a block
    return text_side_attention(transformer.context_embedder)


ENTRY = ContractEntry(
    name="hunyuanvideo15",
    extractor_class=HunyuanVideo15Extractor,
    pipeline_class=HunyuanVideo15Pipeline,
    save=lambda folder, depth: save_tiny_hunyuanvideo15(folder, layers=depth),
    settings=dict(torch_dtype="float32", height=48, width=80, clip_frames=5, caption_max_tokens=CAPTION_TOKENS),
    image_size=(100, 60),
    stock_velocity=stock_velocity,
    block0_vectors=refined_block0(_call, CAPTION_TOKENS),
    positions_off=latent_rope_off,
    stock_latent=stock_latent,
    # HunyuanVideo15Pipeline: sigmas linspace(1, 0, N + 1)[:-1] through the scheduler's static shift, its
    # timesteps (1000 sigma) told as they are
    scheduler_levels=lambda pipe: flow_levels(pipe, 1.0, sigmas=np.linspace(1.0, 0.0, 9)[:-1]),
    stock_expression=stock_expression,
    reference_hooks=reference_hooks,
    patch=(1, 1, 1),
)
