"""Qwen-Image (diffusers `QwenImagePipeline`) on the template: joint attention, Qwen2.5-VL expressions.

Sigma convention: the transformer is told sigma itself (the pipeline passes the scheduler's
timestep / 1000; the model embeds 1000 sigma) and predicts eps - x0, as FLUX does. The scheduler
shifts dynamically and exponentially (mu from the image tokens, base 0.5 at 256 to max 0.9 at 8192),
which `NoiseAt(shift=True)` applies without the schedule-wide `shift_terminal` stretch, which a single
noise level does not have (0.75 -> 0.857 at 1024 x 1024).

The joint sequence is [expressions | caption | image]: the branch goes first in the text stream, so
the main stream's [caption | image] is a view of it. MSRoPE gives text token j the position
max(rows // 2, cols // 2) + j on every axis after the image's centred grid; the processor rotates
each expression's token j and the caption's token j alike (the stock model would number the branch
after the caption). Expressions are read by the pipeline's own Qwen2.5-VL, in its prompt template,
with its 34-token system prefix dropped (`refam.text.decoder`).
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0, apply_rotary_emb_qwen

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, dispatched, install, joint_branch, stream_qkv
from refam.extractors.latents import Latent, normalized
from refam.extractors.template import ImageDiTExtractor
from refam.text.decoder import DecoderReader, PromptTemplate


class QwenImageBranchProcessor(BranchProcessor):
    """`QwenDoubleStreamAttnProcessor2_0` with the branch first in the text stream."""

    stock_class = QwenDoubleStreamAttnProcessor2_0
    refused_arguments = ("encoder_hidden_states_mask", "attention_mask")

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                    attention_mask, image_rotary_emb):
        layout = capture.layout
        image_freqs, text_freqs = image_rotary_emb
        # expression token j and caption token j get the same position (text_freqs[j])
        text_freqs = torch.cat([text_freqs[: layout.expression_len].repeat(layout.num_expressions, 1),
                                text_freqs[: layout.caption_len]])
        text_q, text_k, text_v = stream_qkv(attn, encoder_hidden_states, added=True)
        image_q, image_k, image_v = stream_qkv(attn, hidden_states)
        query, key = (torch.cat([apply_rotary_emb_qwen(t, text_freqs, use_real=False),
                                 apply_rotary_emb_qwen(i, image_freqs, use_real=False)], dim=1)
                      for t, i in ((text_q, image_q), (text_k, image_k)))
        value = torch.cat([text_v, image_v], dim=1)
        # the stock call, with no mask: one caption's embeddings have none
        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), dispatched(self))
        out = out.flatten(2, 3).to(query.dtype)
        text_len = encoder_hidden_states.shape[1]
        text_out, image_out = out[:, :text_len], out[:, text_len:]
        image_out = attn.to_out[0](image_out.contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)  # dropout
        return image_out, attn.to_add_out(text_out.contiguous())


class QwenImageExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from Qwen-Image's MMDiT (60 double-stream blocks).

    `ImageDiTExtractor`'s settings; caption_max_tokens counts the caption's embedding after the
    template's prefix (the pipeline's call: 512).
    """

    pipeline = "QwenImagePipeline"
    checkpoint_layout = (
        "the folder of a Qwen-Image checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as Qwen/Qwen-Image"
    )

    def check_pipeline(self, pipe) -> None:
        config = pipe.transformer.config
        variant = [name for name in ("guidance_embeds", "zero_cond_t", "use_additional_t_cond", "use_layer3d_rope")
                   if config.get(name, False)]
        if variant:
            raise CheckpointError(f"the transformer sets {', '.join(variant)} (an edit, layered or distilled variant); "
                                  "this extractor observes Qwen-Image's text-to-image transformer", field="pretrained")

    def install_branch(self, pipe) -> list[QwenImageBranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), QwenImageBranchProcessor)

    def expression_reader(self) -> DecoderReader:
        template = PromptTemplate(self.pipe.prompt_template_encode, drop=self.pipe.prompt_template_encode_start_idx)
        return DecoderReader(self.pipe.tokenizer, self.pipe.text_encoder, template, self.expression_max_tokens)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> torch.Tensor:
        """The caption's embeddings [1, Lc, D] as the pipeline makes them (one prompt: no mask)."""
        embeds, _ = self.prompt(caption, max_sequence_length=self.caption_max_tokens)
        return embeds.to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """As QwenImageImg2ImgPipeline: a one-frame VAE latent, (z - mean) / std per channel, packed 2x2
        (the distribution's mode: a sample would add noise)."""
        latent = self.pipe.vae.encode(self.pixels(image)[:, :, None]).latent_dist.mode()[:, :, 0]
        latent = normalized(latent, self.pipe.vae.config)  # in the VAE's dtype, as the pipeline
        _, channels, lh, lw = latent.shape
        return Latent(self.pipe._pack_latents(latent, 1, channels, lh, lw).to(self.dtype), (1, lh // 2, lw // 2))

    def timestep(self, sigma: float) -> float:
        return sigma  # the pipeline passes timestep / 1000; the model embeds 1000 sigma

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, expressions):
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=self.join_text(condition, expressions), encoder_hidden_states_mask=None,
            img_shapes=[[grid]], timestep=self.timestep_tensor(sigma, self.dtype), return_dict=False,
        )[0]
