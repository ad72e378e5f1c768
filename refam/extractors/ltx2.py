"""LTX-2 text-to-audio-and-video (diffusers `LTX2Pipeline`) on the template: cross-attention, Gemma 3 expressions
through the text connectors, the video alone.

Sigma convention: the transformer is told the scheduler's timestep, 1000 sigma (float32, as `sigma` too), and
predicts eps - x0 (the pipeline's x0 = x_t - sigma v); the scheduler shifts dynamically with the video's token count.

Text: Gemma 3 reads the prompt (left-padded to `caption_max_tokens`, masked) and every hidden state is stacked per
token; the pipeline's `connectors` normalise them over the prompt's tokens, project them and run a small
transformer over [real tokens | learnt registers] (the registers take the padding's places), one for the video and
one for the audio stream. Each block's video queries cross-attend to the video rows in `attn2` (no RoPE). The branch
reads the same Gemma rows (`StackedLayersReader`) and runs each expression through the connectors alone, as a
prompt of its tokens padded to `caption_max_tokens` (`text_side`); its real rows ride after the caption's in
`attn2`'s keys, [caption | expressions], scored against the video queries from the same `to_k` and `norm_k`, out of
the output's softmax (`cross_branch`). The audio stream keeps the caption's rows alone.

Video alone: refam reads frames, not sound, so each forward is the pipeline's modality-isolation call
(`isolate_modalities=True`: no audio-to-video or video-to-audio attention), in which the video's velocity does not
depend on the audio latent; the audio stream is fed zeros of the length the pipeline gives the clip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from diffusers.models.transformers.transformer_ltx2 import LTX2AudioVideoAttnProcessor

from refam.errors import CheckpointError, ConfigError
from refam.extractors.branch import BranchProcessor, cross_branch, dispatched, install, split_heads
from refam.extractors.latents import Latent
from refam.extractors.text_side import each_alone
from refam.extractors.video_template import VideoDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


class LTX2BranchProcessor(BranchProcessor):
    """`LTX2AudioVideoAttnProcessor` of a block's video-text `attn2` with the expressions' keys after the caption's;
    the caption's part of the mask goes to the stock call."""

    stock_class = LTX2AudioVideoAttnProcessor
    refused_arguments = ("query_rotary_emb", "key_rotary_emb")  # attn2 has no RoPE

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, **_):
        caption_len = encoder_hidden_states.shape[1] - capture.layout.branch_len
        text, expressions = encoder_hidden_states.split_with_sizes((caption_len, capture.layout.branch_len), dim=1)
        if attention_mask is not None:  # the transformer's bias [B, 1, Lc + K L], prepared per head as the stock call
            attention_mask = attn.prepare_attention_mask(attention_mask[..., :caption_len], caption_len, text.shape[0])
            attention_mask = attention_mask.view(text.shape[0], attn.heads, -1, caption_len)
        query = split_heads(attn, attn.norm_q(attn.to_q(hidden_states)))  # QK norms across heads, then heads
        key, branch_key = (split_heads(attn, attn.norm_k(attn.to_k(t))) for t in (text, expressions))
        out = cross_branch(capture, self.block_index, query, key, split_heads(attn, attn.to_v(text)), branch_key,
                           dispatched(self, attention_mask))
        out = out.flatten(2, 3).to(query.dtype)
        if attn.to_gate_logits is not None:  # per-head gates from the video rows, as the stock processor
            gates = 2.0 * torch.sigmoid(attn.to_gate_logits(hidden_states))
            out = (out.unflatten(2, (attn.heads, -1)) * gates.unsqueeze(-1)).flatten(2, 3)
        return attn.to_out[1](attn.to_out[0](out))


class StackedLayersReader(DecoderReader):
    """Gemma's rows as `LTX2Pipeline._get_gemma_prompt_embeds` packs them: every hidden state stacked on a last axis
    and flattened, [.., D x layers] with a feature's layers side by side (the reader concatenates layer after layer)."""

    def encode(self, *args, **kwargs):
        encoded = super().encode(*args, **kwargs)
        layers = len(self.template.hidden_layers)
        return replace(encoded, embeds=encoded.embeds.unflatten(-1, (layers, -1)).transpose(-1, -2).flatten(-2))


@dataclass
class LTX2Caption:
    embeds: torch.Tensor  # [1, Lc, C] the video connector's rows: real tokens, then registers (or masked padding)
    audio: torch.Tensor  # [1, Lc, C'] the audio connector's rows
    mask: torch.Tensor  # [1, Lc] the connectors' mask (all ones with registers)


class LTX2Extractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from LTX-2's video stream (48 blocks), per latent frame.

    Args (besides `VideoDiTExtractor`'s; native 512 x 768, 121 frames at 24 fps, clips of 8k + 1 frames):
        caption_max_tokens: Gemma length of the denoising prompt and of each expression's connector pass (the
            pipeline's 1024; a multiple of the connectors' registers, 128).
        frame_rate: the frame rate the video's positions are computed at (the pipeline's `frame_rate`, 24).
    """

    pipeline = "LTX2Pipeline"
    attention_kind = "cross"
    branch_first = False
    checkpoint_layout = (
        "the folder of an LTX-2 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, audio_vae/, "
        "vocoder/, text_encoder/, tokenizer/, connectors/, scheduler/) or a hub id such as Lightricks/LTX-2")
    temporal_compression = 8  # AutoencoderKLLTX2Video: causal, 8 frames (and the first alone) per latent frame
    spatial_multiple = 32  # 32 pixels per latent cell, one cell per token

    def __init__(self, pretrained: str, height: int = 512, width: int = 768, clip_frames: int = 25,
                 caption_max_tokens: int = 1024, frame_rate: float = 24.0, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)
        if frame_rate <= 0:
            raise ConfigError(f"must be a positive number of frames per second, got {frame_rate}", field="frame_rate")
        if self.expression_max_tokens >= caption_max_tokens:
            raise ConfigError(f"must be below caption_max_tokens ({caption_max_tokens}): each expression is read as a "
                              f"prompt that long, got {self.expression_max_tokens}", field="expression_max_tokens")
        self.frame_rate = frame_rate

    def check_pipeline(self, pipe) -> None:
        config = pipe.transformer.config
        if (config.patch_size, config.patch_size_t) != (1, 1) or config.perturbed_attn:
            raise CheckpointError("its transformer patches more than one latent cell or perturbs attention; this extractor "
                                  "observes LTX-2's 1 x 1 x 1 patches with the stock attention", field="pretrained")
        registers = pipe.connectors.config.video_connector_num_learnable_registers
        if registers and self.caption_max_tokens % registers:
            raise ConfigError(f"must be a multiple of the connectors' {registers} registers, got {self.caption_max_tokens}",
                              field="caption_max_tokens")

    def install_branch(self, pipe) -> list[LTX2BranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), LTX2BranchProcessor, attribute="attn2")

    def placement_modules(self, pipe):
        return [pipe.text_encoder], pipe.transformer, [pipe.vae, pipe.connectors]  # the connectors run per forward

    def expression_reader(self) -> StackedLayersReader:
        layers = tuple(range(self.pipe.text_encoder.config.text_config.num_hidden_layers + 1))  # embeddings, every layer
        return StackedLayersReader(self.pipe.tokenizer, self.pipe.text_encoder, PromptTemplate("{}", hidden_layers=layers),
                                   self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> LTX2Caption:
        embeds, mask, _, _ = self.prompt(prompt=caption, do_classifier_free_guidance=False, max_sequence_length=self.caption_max_tokens)
        video, audio, mask = self.pipe.connectors(embeds.to(self.device), mask.to(self.device),
                                                  padding_side=self.pipe.tokenizer.padding_side)
        return LTX2Caption(video.to(self.dtype), audio.to(self.dtype), mask)

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """As LTX2ConditionPipeline encodes conditioning frames: the VAE's mode, normalised per channel by the VAE's
        latents_mean / latents_std, packed into [1, F h w, C] tokens (1 x 1 x 1 latent cells each)."""
        latent = self.pipe.vae.encode(self.clip_pixels(frames)).latent_dist.mode()
        latent = self.pipe._normalize_latents(latent, self.pipe.vae.latents_mean, self.pipe.vae.latents_std)
        return Latent(self.pipe._pack_latents(latent).to(self.dtype), tuple(latent.shape[2:]))

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def text_side(self, expressions, sigma):
        length, connectors = self.caption_max_tokens, self.pipe.connectors
        registers = connectors.video_connector.learnable_registers is not None

        def as_prompt(rows):  # the rows left-padded as encode_prompt pads a prompt, through the video connector
            n = rows.shape[1]
            padded = torch.cat([rows.new_zeros(1, length - n, rows.shape[-1]), rows], dim=1)
            mask = (torch.arange(length, device=rows.device) >= length - n).long()[None]
            video = connectors(padded.to(connectors.dtype), mask, padding_side="left")[0]
            return video[:, :n] if registers else video[:, length - n:]  # registers move the real rows first

        return each_alone(expressions, as_prompt)

    def denoise(self, x_t, sigma, grid, condition: LTX2Caption, expressions):
        frames, rows, cols = grid
        pipe, mask, timestep = self.pipe, condition.mask, self.timestep_tensor(sigma)
        if expressions is not None:  # the expressions' rows attended in every block: True over them
            mask = torch.cat([mask, mask.new_ones(1, expressions.valid.numel())], dim=1)
        seconds = ((frames - 1) * self.temporal_compression + 1) / self.frame_rate  # the clip's pixel frames
        audio_frames = round(seconds * pipe.audio_sampling_rate / pipe.audio_hop_length / pipe.audio_vae_temporal_compression_ratio)
        audio = x_t.new_zeros(1, audio_frames, pipe.transformer.config.audio_in_channels)
        return pipe.transformer(
            hidden_states=x_t, audio_hidden_states=audio, encoder_hidden_states=self.join_text(condition.embeds, expressions),
            audio_encoder_hidden_states=condition.audio, timestep=timestep, sigma=timestep, encoder_attention_mask=mask,
            audio_encoder_attention_mask=condition.mask, num_frames=frames, height=rows, width=cols, fps=self.frame_rate,
            audio_num_frames=audio_frames, isolate_modalities=True, use_cross_timestep=True, return_dict=False)[0]
