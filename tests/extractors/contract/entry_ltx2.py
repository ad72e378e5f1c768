"""LTX-2 under the contract: the stock `LTX2Pipeline.__call__`'s modality-isolation call of its transformer (video and
audio streams without cross-modal attention) and `LTX2AudioVideoAttnProcessor` of each block's video-text `attn2`;
the caption's Gemma rows (every hidden state stacked) go through the pipeline's text connectors first, whose video
rows are [real tokens | learnt registers]."""

import numpy as np
import torch
from diffusers import LTX2ImageToVideoPipeline, LTX2Pipeline
from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift

from refam.extractors.ltx2 import LTX2Extractor
from refam.testing.tiny_ltx2 import save_tiny_ltx2
from tests.extractors.contract.contract import ContractEntry, block_inputs, flow_levels

CAPTION_TOKENS = 32  # the pipeline's max_sequence_length (1024): a multiple of the tiny connectors' 8 registers
FRAME_RATE = 24.0  # the pipeline's frame_rate, motion_speed 1


def _call(pipe, x_t, sigma, grid, video_text, audio_text, mask):
    # LTX2Pipeline.__call__'s modality-isolation pass: the scheduler's timestep (1000 sigma, float32) as timestep and
    # sigma, the positions of the video's latent frames at the frame rate and of its audio's, the connectors' mask on
    # both streams, and the audio latent the pipeline draws for a clip that long (the video cannot see it)
    frames, rows, cols = grid
    num_frames = (frames - 1) * pipe.vae_temporal_compression_ratio + 1
    audio_frames = round(num_frames / FRAME_RATE * pipe.audio_sampling_rate / pipe.audio_hop_length
                         / float(pipe.audio_vae_temporal_compression_ratio))
    audio = pipe.prepare_audio_latents(1, pipe.audio_vae.config.latent_channels, audio_frames, pipe.audio_vae.config.mel_bins,
                                       dtype=torch.float32, device="cpu", generator=torch.Generator().manual_seed(7))
    timestep = torch.full((1,), 1000.0 * sigma)
    return pipe.transformer(
        hidden_states=x_t, audio_hidden_states=audio, encoder_hidden_states=video_text, audio_encoder_hidden_states=audio_text,
        timestep=timestep, sigma=timestep, encoder_attention_mask=mask, audio_encoder_attention_mask=mask,
        num_frames=frames, height=rows, width=cols, fps=FRAME_RATE, audio_num_frames=audio_frames,
        video_coords=pipe.transformer.rope.prepare_video_coords(1, frames, rows, cols, "cpu", fps=FRAME_RATE),
        audio_coords=pipe.transformer.audio_rope.prepare_audio_coords(1, audio_frames, "cpu"),
        isolate_modalities=True, use_cross_timestep=True, return_dict=False)[0]


def _connected(pipe, embeds, mask):
    # LTX2Pipeline.__call__: the connectors on the prompt's Gemma rows, with the tokenizer's (left) padding side
    return pipe.connectors(embeds, mask, padding_side=pipe.tokenizer.padding_side)


def stock_velocity(pipe, x_t, sigma, grid, caption):
    embeds, mask, _, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False, max_sequence_length=CAPTION_TOKENS,
                                            device="cpu")
    return _call(pipe, x_t, sigma, grid, *_connected(pipe, embeds, mask))


def block0_vectors(pipe, x_t, sigma, grid, caption, expression):
    attn = pipe.transformer.transformer_blocks[0].attn2
    video = block_inputs(attn, lambda: stock_velocity(pipe, x_t, sigma, grid, caption))["args"][0]
    # the expression as the whole prompt: its Gemma rows left-padded to the prompt's length (masked) as encode_prompt
    # pads them, through the connectors, which put its real rows first and registers after them
    n = expression.shape[1]
    embeds = torch.cat([torch.zeros(1, CAPTION_TOKENS - n, expression.shape[-1]), expression], dim=1)
    mask = (torch.arange(CAPTION_TOKENS) >= CAPTION_TOKENS - n).long()[None]
    text = block_inputs(attn, lambda: _call(pipe, x_t, sigma, grid, *_connected(pipe, embeds, mask)))["encoder_hidden_states"]
    # LTX2AudioVideoAttnProcessor: to_q / to_k, then the QK RMS norms across heads, no RoPE in attn2
    query = attn.norm_q(attn.to_q(video)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(text[:, :n])).unflatten(2, (attn.heads, -1))
    return query[0], key[0]


def positions_off(transformer, monkeypatch):
    """The video's RoPE at angle 0 everywhere (cos 1, sin 0: the identity), in the rotary module's own layout."""
    rope = transformer.rope
    width = rope.dim // 2 if rope.rope_type == "split" else rope.dim  # a split rotation pairs the two halves

    def identity(coords, device=None):
        shape = (coords.shape[0], coords.shape[2], width)
        return torch.ones(shape), torch.zeros(shape)

    monkeypatch.setattr(rope, "forward", identity)


def stock_expression(pipe, text, length):
    # LTX2Pipeline._get_gemma_prompt_embeds: <bos> and the text, every hidden state stacked per token, a prompt exactly
    # `length` tokens long (nothing padded)
    embeds, mask, _, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, max_sequence_length=length, device="cpu")
    assert mask.all(), "the prompt was padded"
    return embeds[0]


def stock_latent(pipe, image, height, width):
    # LTX2ImageToVideoPipeline.prepare_latents for a one-frame video of the image (image_crf 0: no re-compression):
    # the video processor's pixels, the VAE's mode ("argmax"), normalised by latents_mean / latents_std, packed; its
    # noise weighs 0 on the conditioned frame
    pixels = pipe.video_processor.preprocess(image, height=height, width=width)
    latents, _ = LTX2ImageToVideoPipeline.prepare_latents(
        pipe, pixels, 1, pipe.transformer.config.in_channels, height, width, num_frames=1, dtype=torch.float32,
        device="cpu", generator=torch.Generator().manual_seed(0))
    return latents


def scheduler_levels(pipe):
    # LTX2Pipeline.__call__: sigmas linspace(1, 1 / N, N) through the dynamic shift at the video's token count (here a
    # 2 x 5 x 7 clip's), the scheduler's timesteps told as they are
    mu = calculate_shift(70, pipe.scheduler.config.base_image_seq_len, pipe.scheduler.config.max_image_seq_len,
                         pipe.scheduler.config.base_shift, pipe.scheduler.config.max_shift)
    return flow_levels(pipe, 1.0, sigmas=np.linspace(1.0, 1 / 8, 8), mu=mu)


ENTRY = ContractEntry(
    name="ltx2",
    extractor_class=LTX2Extractor,
    pipeline_class=LTX2Pipeline,
    save=lambda folder, depth: save_tiny_ltx2(folder, layers=depth),
    settings=dict(torch_dtype="float32", height=160, width=224, clip_frames=9, caption_max_tokens=CAPTION_TOKENS,
                  expression_max_tokens=24),
    image_size=(230, 150),
    stock_velocity=stock_velocity,
    block0_vectors=block0_vectors,
    positions_off=positions_off,
    stock_latent=stock_latent,
    stock_expression=stock_expression,
    scheduler_levels=scheduler_levels,
    patch=(1, 1, 1),
)
