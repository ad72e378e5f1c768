"""Wan 2.1 / 2.2 text-to-video (diffusers `WanPipeline`) on the template: cross-attention, UMT5 expressions, video.

Sigma convention: the transformer is told timestep 1000 sigma (FLUX's unit; the UniPC scheduler has
flow sigmas with a static `flow_shift`, 3 in the Diffusers configs) and predicts eps - x0.

Video tokens attend to themselves in each block's `attn1` (RoPE over frame, row, column) and to the
caption's UMT5 states in `attn2` (no RoPE, no mask: the caption is zero-padded to 512 keys). The
branch rides after the caption, [caption | expressions], so the per-token `text_embedder` projects
expressions as it projects captions; each `attn2` processor strips them, runs the stock attention on
the caption and scores video queries against their keys from the same `to_k` / `norm_k`
(`cross_branch`). Wan 2.2 A14B's two experts both carry the branch (block i of either is block i);
a forward runs the one WanPipeline runs at that sigma (`transformer` while 1000 sigma >= boundary).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from refam.errors import CheckpointError, ConfigError
from refam.extractors.branch import BranchProcessor, cross_branch, dispatched, install, split_heads
from refam.extractors.latents import Latent, normalized
from refam.extractors.video_template import VideoDiTExtractor


def experts(pipe) -> list:
    return [t for t in (pipe.transformer, pipe.transformer_2) if t is not None]


class WanBranchProcessor(BranchProcessor):
    """`WanAttnProcessor` of a block's `attn2` with the expressions' keys after the caption's."""

    stock_class = WanAttnProcessor
    refused_arguments = ()  # a mask goes to the caption's attention, as in the stock call

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb):
        text, expressions = encoder_hidden_states.split_with_sizes(
            (encoder_hidden_states.shape[1] - capture.layout.branch_len, capture.layout.branch_len), dim=1)
        query, key, value = _get_qkv_projections(attn, hidden_states, text)
        query, key = attn.norm_q(query), attn.norm_k(key)
        branch_key = attn.norm_k(attn.to_k(expressions))
        query, key, value, branch_key = (split_heads(attn, t) for t in (query, key, value, branch_key))
        # the stock cross-attention call: the caption's mask, no context-parallel config
        main_attention = dispatched(self, attention_mask, parallel=False)
        out = cross_branch(capture, self.block_index, query, key, value, branch_key, main_attention)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))


class WanExtractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from Wan's transformer, per latent frame.

    Args (besides `VideoDiTExtractor`'s; Wan 2.1 1.3B has 30 blocks, 14B 40; native 480 x 832, clips of 4k + 1 frames):
        caption_max_tokens: UMT5 length of the denoising prompt (Wan: 512, zero-padded, unmasked).
    """

    pipeline = "WanPipeline"
    attention_kind = "cross"
    branch_first = False
    checkpoint_layout = (
        "the folder of a Wan text-to-video checkpoint in the diffusers layout (model_index.json, transformer/ [and "
        "transformer_2/], vae/, text_encoder/, tokenizer/, scheduler/) or a hub id such as Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    )
    temporal_compression = 4  # AutoencoderKLWan: temperal_downsample (False, True, True)

    def __init__(self, pretrained: str, height: int = 480, width: int = 832, clip_frames: int = 21, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames, **settings)

    def check_pipeline(self, pipe) -> None:
        if pipe.transformer is None or (pipe.config.boundary_ratio is not None and pipe.transformer_2 is None):
            raise CheckpointError("the Wan checkpoint lacks the transformer its boundary_ratio needs", field="pretrained")
        if any(t.config.in_channels != pipe.vae.config.z_dim for t in experts(pipe)):
            raise CheckpointError("an image-to-video Wan checkpoint: use a text-to-video one", field="pretrained")
        multiple = pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1]
        for name in ("height", "width"):
            if getattr(self, name) % multiple:
                raise ConfigError(f"must be a multiple of {multiple} for this checkpoint, got {getattr(self, name)}", field=name)

    def install_branch(self, pipe) -> list[WanBranchProcessor]:
        return [p for t in experts(pipe) for p in install(list(t.blocks), WanBranchProcessor, attribute="attn2")]

    @property
    def num_blocks(self) -> int:
        return len(self.pipe.transformer.blocks)  # per expert: Wan 2.2's two number theirs alike

    def placement_modules(self, pipe):
        denoisers = experts(pipe)
        return [pipe.text_encoder], denoisers[0] if len(denoisers) == 1 else torch.nn.ModuleList(denoisers), [pipe.vae]

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """As WanImageToVideoPipeline conditions on a video: the VAE's mode, normalised per channel in
        float32 (its prepare_latents runs in float32), the inverse of WanPipeline's decode."""
        latent = self.pipe.vae.encode(self.clip_pixels(frames)).latent_dist.mode()
        latent = normalized(latent.float(), self.pipe.vae.config)
        _, _, frames_, lh, lw = latent.shape
        _, ph, pw = self.pipe.transformer.config.patch_size
        return Latent(latent.to(self.dtype), (frames_, lh // ph, lw // pw))

    def timestep(self, sigma: float) -> float:
        return 1000.0 * sigma

    def expert(self, sigma: float):
        """The transformer WanPipeline runs at this noise level (Wan 2.2: high- or low-noise expert)."""
        ratio = self.pipe.config.boundary_ratio
        if ratio is None or self.timestep(sigma) >= ratio * self.pipe.scheduler.config.num_train_timesteps:
            return self.pipe.transformer
        return self.pipe.transformer_2

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, expressions):
        # Wan 2.2 TI2V-5B's pipeline tells every token its timestep
        timestep = self.timestep_tensor(sigma, shape=(1, math.prod(grid)) if self.pipe.config.expand_timesteps else (1,))
        return self.expert(sigma)(hidden_states=x_t, timestep=timestep, encoder_hidden_states=self.join_text(condition, expressions),
                                  return_dict=False)[0]
