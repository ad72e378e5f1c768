"""Kandinsky 6 under the contract: the stock `Kandinsky6TI2VAPipeline.__call__` with `sample_audio=False` (video
alone) and `Kandinsky6AttnProcessor` of each fused block's video cross-attention; the caption's Qwen rows go
through the transformer's text blocks before the fused blocks, which receive them afresh, under the caption's
padding mask."""

import torch
from diffusers import Kandinsky6TI2VAPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import retrieve_latents

from refam.extractors.kandinsky6 import Kandinsky6Extractor
from refam.testing.tiny_kandinsky6 import save_tiny_kandinsky6
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels, text_side_attention

CAPTION_TOKENS = 24  # the pipeline's max_sequence_length (1024): the Qwen rows after the crop


def _call(pipe, x_t, sigma, text, pooled, mask):
    # Kandinsky6TI2VAPipeline.__call__ (no image, no audio): [latents | zero condition latents | zero mask] on the
    # last axis, the scheduler's timestep (1000 sigma) as it is, the mask as encode_prompt returns it
    x = torch.cat([x_t, torch.zeros_like(x_t), torch.zeros(*x_t.shape[:-1], 1)], dim=-1)
    return pipe.transformer(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled,
                            timestep=torch.full((1,), 1000.0 * sigma), encoder_attention_mask=mask, return_dict=False)[0]


def _prompt(pipe, text, length):
    embeds, pooled, mask, *_ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=length,
                                                  device="cpu")
    return embeds, pooled, mask


def stock_velocity(pipe, x_t, sigma, grid, caption):
    return _call(pipe, x_t, sigma, *_prompt(pipe, caption, CAPTION_TOKENS))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.visual_transformer_blocks[0].video_dec_block.cross_attention
    image = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))
    # the expression as the whole Qwen caption (unpadded: no mask) beside the caption's CLIP vector: the text
    # blocks mix its rows alone
    _, pooled, _ = _prompt(pipe, caption, CAPTION_TOKENS)
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, expression, pooled, None))
    query = attn.query_norm(attn.to_query(image["args"][0]).unflatten(-1, (attn.num_heads, -1)))
    key = attn.key_norm(attn.to_key(text["encoder_hidden_states"]).unflatten(-1, (attn.num_heads, -1)))
    return query[0], key[0]


def stock_expression(pipe, text, length):
    # Kandinsky6TI2VAPipeline._get_prompt_embeds: the template, 129 tokens cropped, the last hidden layer, a prompt
    # exactly `length` tokens long (no mask)
    embeds, _, mask = _prompt(pipe, text, length)
    assert mask is None, "the prompt was padded"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # Kandinsky6TI2VAPipeline.encode_image (the VAE's mode, "argmax", where it samples) as the one frame of a video
    # in the transformer's [B, T, H, W, C] layout (its first_frame_latents[:, None])
    pixels = pipe.video_processor.preprocess(image, height=height, width=width, resize_mode="crop").unsqueeze(2)
    latent = retrieve_latents(pipe.vae.encode(pixels), sample_mode="argmax") * pipe.vae.config.scaling_factor
    return latent.permute(0, 2, 3, 4, 1)


def positions_off(transformer, monkeypatch):
    """The video's 3-axis RoPE at angle 0 everywhere (the identity rotation); the text's positions act in the
    text blocks alone, before any video token."""
    rope = transformer.visual_rope_embeddings
    for axis in range(3):
        monkeypatch.setattr(rope, f"angles_{axis}", torch.zeros_like(getattr(rope, f"angles_{axis}")))


def reference_hooks(transformer, valid):
    # the text blocks' own self-attention (the caption's, and the branch's as captions) is not a block
    blocks = [*transformer.video_text_transformer_blocks, *transformer.audio_text_transformer_blocks]
    return [handle for block in blocks for handle in text_side_attention(block)]


ENTRY = ContractEntry(
    name="kandinsky6",
    extractor_class=Kandinsky6Extractor,
    pipeline_class=Kandinsky6TI2VAPipeline,
    save=lambda folder, depth: save_tiny_kandinsky6(folder, layers=depth),
    settings=dict(torch_dtype="float32", height=48, width=80, clip_frames=5, caption_max_tokens=CAPTION_TOKENS),
    image_size=(100, 60),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    # Kandinsky6TI2VAPipeline: the scheduler's own set_timesteps(N) through its static shift, its timesteps
    # (1000 sigma) told as they are
    scheduler_levels=lambda pipe: flow_levels(pipe),
    stock_expression=stock_expression,
    reference_hooks=reference_hooks,
)
