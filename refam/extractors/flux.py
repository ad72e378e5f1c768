"""FLUX.1 (diffusers `FluxPipeline`) on the template: joint attention, T5 expressions, sigma as timestep.

The joint sequence is [expressions | caption | image]: the branch goes first in the text stream, so
the main stream's [caption | image] is a view of it, not a copy. Text tokens all get position id 0
(`txt_ids` zeros), the branch's like the caption's; image tokens get (0, row, column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from refam.errors import ConfigError
from refam.extractors.branch import BranchProcessor, dispatched, install, joint_branch, split_heads
from refam.extractors.latents import Latent, vae_latent
from refam.extractors.template import ImageDiTExtractor


def flux_joint(processor: BranchProcessor, capture, query, key, value, attention_mask, image_rotary_emb) -> torch.Tensor:
    """What FLUX.1's and FLUX.2's processors share: RoPE on the whole [B, S, H, D] sequence
    [branch | caption | image], then the joint kernel with the stock attention call; heads flattened."""
    if image_rotary_emb is not None:
        query, key = (apply_rotary_emb(x, image_rotary_emb, sequence_dim=1) for x in (query, key))
    out = joint_branch(capture, processor.block_index, query, key, value, ("branch", "caption", "image"),
                       dispatched(processor, attention_mask))
    return out.flatten(2, 3).to(query.dtype)


class FluxBranchProcessor(BranchProcessor):
    """`FluxAttnProcessor` (FLUX.1's double and single blocks; FLUX.2's double blocks with its own
    stock class) with the branch first in the text stream."""

    stock_class = FluxAttnProcessor
    refused_arguments = ()  # a mask goes to the main stream's attention, as in the stock call
    contiguous_outputs = True  # FLUX.1's stock processor projects contiguous copies, FLUX.2's the views

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        q, k, v, e_q, e_k, e_v = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = split_heads(attn, q, attn.norm_q), split_heads(attn, k, attn.norm_k), split_heads(attn, v)
        if attn.added_kv_proj_dim is not None:  # double block: the text stream has its own projections
            query = torch.cat([split_heads(attn, e_q, attn.norm_added_q), query], dim=1)
            key = torch.cat([split_heads(attn, e_k, attn.norm_added_k), key], dim=1)
            value = torch.cat([split_heads(attn, e_v), value], dim=1)
        out = flux_joint(self, capture, query, key, value, attention_mask, image_rotary_emb)
        if encoder_hidden_states is None:  # single-stream block: no output projection here
            return out
        text_out, image_out = out.split_with_sizes((encoder_hidden_states.shape[1], hidden_states.shape[1]), dim=1)
        if self.contiguous_outputs:
            text_out, image_out = text_out.contiguous(), image_out.contiguous()
        return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(text_out)


def packed_latent(extractor: ImageDiTExtractor, image) -> Latent:
    """As FluxImg2ImgPipeline (and Chroma's) make it: (z - shift_factor) * scaling_factor of the VAE's
    mode, packed 2 x 2 cells per token (`_pack_latents`), row-major."""
    latent = vae_latent(extractor.pipe, extractor.pixels(image))
    _, channels, lh, lw = latent.shape
    return Latent(extractor.pipe._pack_latents(latent, 1, channels, lh, lw).to(extractor.dtype), (1, lh // 2, lw // 2))


def install_flux_branch(transformer) -> list[FluxBranchProcessor]:
    """A branch processor on every double then single block of a FluxTransformer2DModel (0..D+S-1)."""
    return install(list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks), FluxBranchProcessor)


@dataclass
class CaptionCondition:
    embeds: torch.Tensor  # [1, Lc, D] T5
    pooled: torch.Tensor  # [1, P] CLIP
    guidance: torch.Tensor | None


class FluxExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from a FLUX.1 transformer (sigma = its timestep).

    Args (besides `ImageDiTExtractor`'s; FLUX.1 has 19 double + 38 single blocks, counted in that order;
    caption_max_tokens: FLUX.1-dev 512, schnell 256):
        pooled_prompt: what CLIP's pooled vector encodes: "caption" (FLUX's pipeline) or "empty"
            (for models trained with an empty CLIP prompt, such as refam-shapes).
        guidance_scale: guidance embedding of guidance-distilled models (FLUX.1-dev); ignored otherwise.
    """

    pipeline = "FluxPipeline"
    checkpoint_layout = (
        "the folder of a FLUX.1 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, scheduler/) or a hub id such as black-forest-labs/FLUX.1-dev"
    )
    reader_components = ("tokenizer_2", "text_encoder_2")  # T5

    def __init__(self, pretrained: str, pooled_prompt: str = "caption", guidance_scale: float = 3.5, **settings) -> None:
        super().__init__(pretrained, **settings)
        if pooled_prompt not in ("caption", "empty"):
            raise ConfigError(f"must be 'caption' or 'empty', got {pooled_prompt!r}", field="pooled_prompt")
        self.pooled_prompt, self.guidance_scale = pooled_prompt, guidance_scale

    def install_branch(self, pipe) -> list[FluxBranchProcessor]:
        return install_flux_branch(pipe.transformer)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> CaptionCondition:
        embeds, pooled, _ = self.prompt(prompt=caption if self.pooled_prompt == "caption" else "", prompt_2=caption,
                                        max_sequence_length=self.caption_max_tokens)
        return CaptionCondition(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype),
                                self.guidance(self.guidance_scale))

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        return packed_latent(self, image)

    def timestep(self, sigma: float) -> float:
        return sigma  # FluxTransformer2DModel multiplies by 1000 itself

    def denoise(self, x_t, sigma, grid, condition: CaptionCondition, expressions):
        text = self.join_text(condition.embeds, expressions)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=text, pooled_projections=condition.pooled,
            timestep=self.timestep_tensor(sigma, self.dtype),
            img_ids=self.pipe._prepare_latent_image_ids(1, grid[1], grid[2], self.device, self.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype),
            guidance=condition.guidance, return_dict=False,
        )[0]
