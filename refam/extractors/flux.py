"""FLUX.1 (diffusers `FluxPipeline`) on the template: joint attention, T5 expressions, sigma as timestep.

The joint sequence is [expressions | caption | image]: the branch goes first in the text stream, so
the main stream's [caption | image] is a view of it, not a copy. Text tokens all get position id 0
(`txt_ids` zeros), the branch's like the caption's; image tokens get (0, row, column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from refam.errors import ConfigError
from refam.extractors.branch import BranchProcessor, install, joint_branch
from refam.extractors.capture import BranchLayout
from refam.extractors.template import ImageDiTExtractor, Latent, vae_latent

CHECKPOINT_LAYOUT = (
    "the folder of a FLUX.1 checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
    "text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, scheduler/) or a hub id such as black-forest-labs/FLUX.1-dev")


class FluxBranchProcessor(BranchProcessor):
    """`FluxAttnProcessor` (double and single blocks) with the branch first in the text stream."""

    stock_class = FluxAttnProcessor

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        query, key, value, e_query, e_key, e_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:  # double block: the text stream has its own projections
            query = torch.cat([attn.norm_added_q(e_query.unflatten(-1, (-1, attn.head_dim))), query], dim=1)
            key = torch.cat([attn.norm_added_k(e_key.unflatten(-1, (-1, attn.head_dim))), key], dim=1)
            value = torch.cat([e_value.unflatten(-1, (-1, attn.head_dim)), value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        def main_attention(q, k, v):
            return dispatch_attention_fn(q, k, v, attn_mask=None, backend=self.stock._attention_backend,
                                         parallel_config=self.stock._parallel_config)

        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), main_attention)
        out = out.flatten(2, 3)
        if encoder_hidden_states is None:  # single-stream block: no output projection here
            return out
        text_len = encoder_hidden_states.shape[1]
        image_out = attn.to_out[1](attn.to_out[0](out[:, text_len:].contiguous()))
        return image_out, attn.to_add_out(out[:, :text_len].contiguous())


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

    checkpoint_layout = CHECKPOINT_LAYOUT

    reader_components = ("tokenizer_2", "text_encoder_2")  # T5

    def __init__(self, pretrained: str, pooled_prompt: str = "caption", guidance_scale: float = 3.5, **settings) -> None:
        super().__init__(pretrained, **settings)
        if pooled_prompt not in ("caption", "empty"):
            raise ConfigError(f"must be 'caption' or 'empty', got {pooled_prompt!r}", field="pooled_prompt")
        self.pooled_prompt, self.guidance_scale = pooled_prompt, guidance_scale

    def backbone_settings(self) -> dict:
        return {"pooled_prompt": self.pooled_prompt, "guidance_scale": self.guidance_scale}

    def pipeline_class(self) -> type:
        from diffusers import FluxPipeline

        return FluxPipeline

    def install_branch(self, pipe) -> list[FluxBranchProcessor]:
        return install_flux_branch(pipe.transformer)

    def placement_modules(self, pipe):
        return [pipe.text_encoder, pipe.text_encoder_2], pipe.transformer, [pipe.vae]

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> CaptionCondition:
        embeds, pooled, _ = self.prompt(prompt=caption if self.pooled_prompt == "caption" else "", prompt_2=caption,
                                        max_sequence_length=self.caption_max_tokens)
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full((1,), self.guidance_scale, device=self.device, dtype=torch.float32)
        return CaptionCondition(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype), guidance)

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        latent = vae_latent(self.pipe, image, *self.image_size(*image.size), self.device)
        _, channels, lh, lw = latent.shape
        return Latent(self.pipe._pack_latents(latent, 1, channels, lh, lw).to(self.dtype), (1, lh // 2, lw // 2))

    def timestep(self, sigma: float) -> float:
        return sigma  # FluxTransformer2DModel multiplies by 1000 itself

    def denoise(self, x_t, sigma, grid, condition: CaptionCondition, branch):
        text = condition.embeds if branch is None else torch.cat([branch.to(condition.embeds.dtype), condition.embeds], dim=1)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=text, pooled_projections=condition.pooled,
            timestep=torch.full((1,), self.timestep(sigma), device=self.device, dtype=self.dtype),
            img_ids=self.pipe._prepare_latent_image_ids(1, grid[1], grid[2], self.device, self.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype),
            guidance=condition.guidance, return_dict=False,
        )[0]

    def branch_layout(self, encoded, condition: CaptionCondition) -> BranchLayout:
        return BranchLayout(caption_len=condition.embeds.shape[1], key_valid=encoded.valid)
