"""Qwen-Image 2.1 (diffusers `QwenImage21Pipeline`) on the template: a single-stream, block-causal DiT,
Qwen3-VL expressions read as the model reads a caption.

Sigma convention: the transformer is told sigma itself (the pipeline passes the scheduler's timestep / 1000;
the model embeds 1000 sigma) and predicts eps - x0. Text rows are modulated from t = 0 whatever sigma is
(`causal_condition`), image rows from sigma. `shift: true` applies the scheduler's dynamic shift of the
image's token count (the pipeline's `calculate_shift`, FLUX's defaults where the config names none).

Text: the pipeline wraps the prompt in its chat template, reads Qwen3-VL's last decoder layer BEFORE its
final norm (a forward hook neutralises the norm, which transformers 5 ties to the last hidden state) and
drops the system turn: "<|im_start|>user\\n" + text + "<|im_end|>\\n<|im_start|>assistant\\n" ride.

Attention is block-causal: a text token sees the earlier text and itself, never the image; image tokens
see all the text and their whole image. An expression is read as a caption of its text is read
(`causal_text`): each of its tokens sees its own earlier tokens and itself, never the image, the caption or
another expression; modulated from t = 0, as text. Its rows therefore evolve exactly as the rows of a
caption of its text do, and the maps are the image queries over its keys, the attention the model pays a
caption. The joint sequence is [branch | caption | image]; the model numbers the joint text 0, 1, ... on
all three RoPE axes and freezes the image's frame axis at the text's length, so the processor gives
expression token j and caption token j text position j, and the image the frame position of the caption's
length, as the stock model numbers [caption | image].
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21AttnProcessor, _qwenimage21_prepare_qkv

from refam.errors import ConfigError
from refam.extractors.branch import BranchProcessor, install, joint_branch
from refam.extractors.capture import BranchLayout
from refam.extractors.latents import Latent, channel_stats
from refam.extractors.template import ImageDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


def as_captions(rotary_emb: torch.Tensor, layout: BranchLayout, frame_pairs: int) -> torch.Tensor:
    """The rotations [S, D / 2] of [branch | caption | image] as the stock model gives a caption alone: text
    row p of the joint rotations is text position p on every axis, so expression and caption token j take row
    j; the image keeps its row and column rotations, its frame axis (the first `frame_pairs`) at position Lc."""
    caption_len, text_len = layout.caption_len, layout.branch_len + layout.caption_len
    image = rotary_emb[text_len:]
    frame = rotary_emb[caption_len, :frame_pairs].expand(image.shape[0], -1)
    return torch.cat([rotary_emb[: layout.expression_len].repeat(layout.num_expressions, 1), rotary_emb[:caption_len],
                      torch.cat([frame, image[:, frame_pairs:]], dim=-1)])


class QwenImage21BranchProcessor(BranchProcessor):
    """`QwenImage21AttnProcessor`'s prefill with the branch first in the joint sequence."""

    stock_class = QwenImage21AttnProcessor
    # a padded caption's key mask, the flex BlockMask and the prefix cache: the pipeline's are none for one prompt
    refused_arguments = ("attention_mask", "key_valid", "layer_cache", "kv_cache_mode")
    frame_pairs: int  # complex rotations on the frame axis (axes_dims_rope[0] / 2), set at install

    def with_branch(self, capture, attn, hidden_states, attention_mask, rotary_emb, layer_cache, kv_cache_mode,
                    cache_write_slice, segments, key_valid):
        layout = capture.layout
        rotary_emb = as_captions(rotary_emb, layout, self.frame_pairs)
        query, key, value, _ = _qwenimage21_prepare_qkv(attn, hidden_states, rotary_emb, None, None, None)
        caption_len, parallel = layout.caption_len, self.stock._parallel_config

        def main_attention(q, k, v):  # the stock prefill of [caption | image]: causal caption, then the image over all
            causal = torch.ones(caption_len, caption_len, dtype=torch.bool, device=q.device).tril()[None, None]
            text = dispatch_attention_fn(q[:, :caption_len], k[:, :caption_len], v[:, :caption_len], attn_mask=causal,
                                         dropout_p=0.0, backend=None, parallel_config=parallel)
            image = dispatch_attention_fn(q[:, caption_len:], k, v, attn_mask=None, dropout_p=0.0, backend=None,
                                          parallel_config=parallel)
            return torch.cat([text, image], dim=1)

        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), main_attention)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))


class UnnormedLastLayerReader(DecoderReader):
    """`DecoderReader` with the LLM's final norm neutralised while it reads, as `QwenImage21Pipeline` reads
    `hidden_states[-1]`: the last decoder layer's output, before the norm."""

    def encode(self, *args, **kwargs):
        text_model = getattr(self.encoder.model, "language_model", self.encoder.model)
        handle = text_model.norm.register_forward_hook(lambda module, args, output: args[0])
        try:
            return super().encode(*args, **kwargs)
        finally:
            handle.remove()


class QwenImage21Extractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from Qwen-Image 2.1's single-stream DiT (32 blocks).

    `ImageDiTExtractor`'s settings; caption_max_tokens is the longest caption accepted, in the rows the
    pipeline keeps (it cuts none: a longer caption is refused).
    """

    pipeline = "QwenImage21Pipeline"
    causal_text = True
    checkpoint_layout = (
        "the folder of a Qwen-Image 2.1 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, processor/, scheduler/) or a hub id such as Qwen/Qwen-Image-2.1"
    )

    def install_branch(self, pipe) -> list[QwenImage21BranchProcessor]:
        processors = install(list(pipe.transformer.transformer_blocks), QwenImage21BranchProcessor)
        for processor in processors:
            processor.frame_pairs = pipe.transformer.config.axes_dims_rope[0] // 2
        return processors

    def expression_reader(self) -> UnnormedLastLayerReader:
        template = PromptTemplate(self.pipe.prompt_template_t2i, drop=self.pipe._drop_idx)
        return UnnormedLastLayerReader(self.pipe.processor.tokenizer, self.pipe.text_encoder, template,
                                       self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> torch.Tensor:
        """The caption's rows [1, Lc, D] as the pipeline reads a prompt (one prompt: no mask, no image slots)."""
        embeds = self.prompt(caption)[0]
        if embeds.shape[1] > self.caption_max_tokens:
            raise ConfigError(f"the caption takes {embeds.shape[1]} tokens, more than {self.caption_max_tokens}: "
                              "shorten it or raise the limit", field="caption_max_tokens")
        return embeds.to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """As QwenImage21Pipeline encodes a condition image: RGBA pixels (the VAE reads four channels), the
        latent's mode, (z - mean) / std per channel, flattened row-major (unpatched: a token per 16 px)."""
        height, width = self.image_size(*image.size)
        pixels = self.pipe.image_processor.preprocess(image.convert("RGBA"), height=height, width=width)
        latent = self.pipe.vae.encode(pixels[:, :, None].to(self.device, self.pipe.vae.dtype)).latent_dist.mode()
        mean, std = channel_stats(self.pipe.vae.config, latent)
        latent = (latent - mean) / std
        _, channels, _, rows, cols = latent.shape
        return Latent(self.pipe._pack_latents(latent, 1, channels, rows, cols).to(self.dtype), (1, rows, cols))

    def timestep(self, sigma: float) -> float:
        return sigma  # the pipeline passes timestep / 1000; the model embeds 1000 sigma

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, expressions):
        text = self.join_text(condition, expressions)
        # the image's slots after the text, one per 2 x 2 latent tokens, as the pipeline appends them
        slots = torch.arange(text.shape[1] + x_t.shape[1] // 4, device=self.device)[None] >= text.shape[1]
        out = self.pipe.transformer(
            hidden_states=x_t, timestep=self.timestep_tensor(sigma, self.dtype), encoder_hidden_states=text,
            encoder_hidden_states_mask=None, img_shapes=[[grid]], img_mask=slots, return_dict=False,
        )[0]
        return out[:, -x_t.shape[1]:]  # the target image's rows, as the pipeline takes them
