"""PixArt-Sigma (diffusers `PixArtSigmaPipeline`) on the template: cross-attention to T5, a VP model.

Sigma convention: variance preserving with eps-prediction (linear betas, DPM-Solver++ in the
pipeline), seen as a flow by `refam.extractors.vp`: the transformer is told the DDPM timestep of
sigma's signal-to-noise ratio, sees x_t / r, and its eps (the first half of its output; the second
is the learned variance the pipeline drops) becomes eps - x0. The scheduler has no flow shift, so
`shift: true` is refused (the template's default on a VP scheduler).

Image tokens attend to themselves in each block's `attn1` (no positions: a 2D sin-cos table is
added at patch embedding) and to the caption's T5 states in `attn2` (`AttnProcessor2_0`, no QK
norm, the caption's padding masked by a bias). The branch rides after the caption, [caption |
expressions], so the per-token `caption_projection` projects expressions as it projects captions;
each `attn2` processor splits them off, runs the stock masked attention on the caption alone
(`legacy_sdpa`) and scores image queries against their keys from the same `to_k` (`cross_branch`).
The caption is encoded without the pipeline's `clean_caption` (which lowercases and rewrites it),
as the expressions are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, cross_branch, install, legacy_sdpa, split_heads
from refam.extractors.latents import Latent, patched_latent, vae_latent
from refam.extractors.template import ImageDiTExtractor
from refam.extractors.vp import VPFlow


class LegacyCrossBranchProcessor(BranchProcessor):
    """`AttnProcessor2_0` of a cross-attention (PixArt's, SANA's `attn2`) with the expressions' keys
    after the caption's; the transformer's mask covers [caption | expressions], the caption's part
    goes to the stock call."""

    stock_class = AttnProcessor2_0
    refused_arguments = ()  # the caption's padding mask goes to the caption's attention, as in the stock call
    qk_norm_across_heads = False  # SANA's processor norms q and k over all heads at once, before splitting them

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, **_):
        caption_len = encoder_hidden_states.shape[1] - capture.layout.branch_len
        text, expressions = encoder_hidden_states.split_with_sizes((caption_len, capture.layout.branch_len), dim=1)
        query, key, branch_key = (self.heads(attn, x, norm) for x, norm in
                                  ((attn.to_q(hidden_states), attn.norm_q), (attn.to_k(text), attn.norm_k),
                                   (attn.to_k(expressions), attn.norm_k)))
        value = split_heads(attn, attn.to_v(text))
        mask = None if attention_mask is None else attention_mask[..., :caption_len]
        out = cross_branch(capture, self.block_index, query, key, value, branch_key, legacy_sdpa(attn, mask))
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3).to(query.dtype)))
        return out / attn.rescale_output_factor

    def heads(self, attn, x: torch.Tensor, norm) -> torch.Tensor:
        """[B, S, H, D] after the QK norm, applied per head or (`qk_norm_across_heads`) over all heads at once."""
        if self.qk_norm_across_heads and norm is not None:
            return split_heads(attn, norm(x))
        return split_heads(attn, x, norm)


@dataclass
class MaskedCaption:
    embeds: torch.Tensor  # [1, Lc, D]: the text encoder's rows, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc]: 1 on the caption's real tokens, 0 on its padding (the transformer's bias)

    def with_branch(self, branch_len: int) -> torch.Tensor:
        """The mask over [caption | expressions]: the branch's keys open (its processor keeps them out of
        the caption's attention, and scores them where an expression's padding is hidden)."""
        return torch.cat([self.mask, self.mask.new_ones(1, branch_len)], dim=1)


class PixArtSigmaExtractor(ImageDiTExtractor):
    """Cross-attention maps of referring expressions from PixArt-Sigma's transformer (28 blocks in XL-2).

    Args (besides `ImageDiTExtractor`'s; native 1024 x 1024, any aspect in multiples of 16):
        caption_max_tokens: T5 length of the denoising prompt (the pipeline's default 300; padding masked).
    """

    pipeline = "PixArtSigmaPipeline"
    attention_kind = "cross"
    branch_first = False
    checkpoint_layout = (
        "the folder of a PixArt-Sigma checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    )

    def __init__(self, pretrained: str, caption_max_tokens: int = 300, **settings) -> None:
        super().__init__(pretrained, caption_max_tokens=caption_max_tokens, **settings)

    def check_pipeline(self, pipe) -> None:
        if pipe.transformer.use_additional_conditions:
            raise CheckpointError("is a PixArt-alpha checkpoint (resolution and aspect-ratio conditions); use a "
                                  "PixArt-Sigma one", field="pretrained")
        self.vp = VPFlow(pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)

    def install_branch(self, pipe) -> list[LegacyCrossBranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), LegacyCrossBranchProcessor, attribute="attn2")

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> MaskedCaption:
        embeds, mask, _, _ = self.prompt(prompt=caption, do_classifier_free_guidance=False, clean_caption=False,
                                         max_sequence_length=self.caption_max_tokens)
        return MaskedCaption(embeds.to(self.device, self.dtype), mask.to(self.device))

    @torch.inference_mode()
    def encode_image(self, image) -> Latent:
        """The inverse of the pipeline's decode: the VAE's mode times scaling_factor (no shift factor)."""
        return patched_latent(vae_latent(self.pipe, self.pixels(image)), self.dtype, self.pipe.transformer.config.patch_size)

    def timestep(self, sigma: float) -> float:
        return self.vp.timestep(sigma)

    def denoise(self, x_t, sigma, grid, condition: MaskedCaption, expressions):
        """The flow velocity eps - x0 at the flow state x_t: PixArt's eps at the matching VP state, converted."""
        x = self.vp.state(x_t, sigma)
        mask = condition.mask if expressions is None else condition.with_branch(expressions.valid.numel())
        out = self.pipe.transformer(
            x, encoder_hidden_states=self.join_text(condition.embeds, expressions), encoder_attention_mask=mask,
            timestep=self.timestep_tensor(sigma), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        eps = out[:, : x.shape[1]]  # the learned variance's channels follow, as the pipeline drops them
        return self.vp.flow_velocity(eps, x, sigma)
