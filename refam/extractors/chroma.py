"""Chroma (diffusers `ChromaPipeline`) on the template: FLUX.1's joint attention without CLIP, T5 padding masked.

Sigma convention: as FLUX.1: the transformer is told sigma (it multiplies by 1000 itself) and predicts
eps - x0; `shift: true` applies the scheduler's dynamic shift (FLUX's `calculate_shift` of the image's
token count), which `ChromaPipeline` passes as mu.

The joint sequence is [expressions | caption | image], FLUX.1's processors (`FluxAttnProcessor` in 19
double and 38 single blocks), text ids zero, image ids (0, row, column). What Chroma adds is a mask:
the pipeline gives the caption's T5 tokens 1 up to one past its last real token, its padding 0, and
the image 1; each block turns that [B, S] row into the [B, 1, S, S] product m_i m_j and the stock
attention adds it to the logits (a float mask is a bias in SDPA: +1 between kept tokens). The
transformer is handed the row with the branch's tokens at 1, and each processor cuts the main
stream's block out of the product: the main stream's attention is the stock one, and the branch's
own key bias (`BranchLayout.key_bias`) decides what an expression sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from refam.extractors.branch import BranchProcessor, install
from refam.extractors.flux import FluxBranchProcessor, packed_latent
from refam.extractors.latents import Latent
from refam.extractors.template import ImageDiTExtractor


class ChromaBranchProcessor(FluxBranchProcessor):
    """`FluxAttnProcessor` of Chroma's double and single blocks: the main stream's attention takes the
    main stream's block of the pairwise mask, [caption | image] x [caption | image]."""

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        if attention_mask is not None:  # the branch goes first in the text stream
            branch = capture.layout.branch_len
            attention_mask = attention_mask[:, :, branch:, branch:]
        return super().with_branch(capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


@dataclass
class ChromaCaption:
    embeds: torch.Tensor  # [1, Lc, D]: T5 rows, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc]: the pipeline's mask, 1 up to one past the last real token, in the model's dtype


class ChromaExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from Chroma's transformer (sigma = its timestep).

    Args (besides `ImageDiTExtractor`'s; Chroma has 19 double + 38 single blocks, counted in that order):
        caption_max_tokens: T5 length of the denoising prompt (the pipeline's default 512; padding masked).
    """

    pipeline = "ChromaPipeline"
    checkpoint_layout = (
        "the folder of a Chroma checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as lodestones/Chroma1-HD"
    )

    def install_branch(self, pipe) -> list[BranchProcessor]:
        transformer = pipe.transformer
        blocks = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
        return install(blocks, ChromaBranchProcessor)

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> ChromaCaption:
        embeds, _, mask, *_ = self.prompt(prompt=caption, do_classifier_free_guidance=False,
                                          max_sequence_length=self.caption_max_tokens)
        return ChromaCaption(embeds.to(self.device, self.dtype), mask.to(self.device, self.dtype))

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        return packed_latent(self, image)  # as ChromaImg2ImgPipeline, FLUX.1's

    def timestep(self, sigma: float) -> float:
        return sigma  # ChromaTransformer2DModel multiplies by 1000 itself

    def denoise(self, x_t, sigma, grid, condition: ChromaCaption, expressions):
        text = self.join_text(condition.embeds, expressions)
        branch = text.shape[1] - condition.embeds.shape[1]
        # ChromaPipeline._prepare_attention_mask: [text | image ones]; the branch's tokens at 1 before the caption
        ones = condition.mask.new_ones
        mask = torch.cat([ones(1, branch), condition.mask, ones(1, x_t.shape[1])], dim=1)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=text, timestep=self.timestep_tensor(sigma, self.dtype),
            img_ids=self.pipe._prepare_latent_image_ids(1, grid[1], grid[2], self.device, self.dtype),
            txt_ids=torch.zeros(text.shape[1], 3, device=self.device, dtype=self.dtype),
            attention_mask=mask, return_dict=False,
        )[0]
