"""CogVideoX (diffusers `CogVideoXPipeline`: 2b, 5b, 1.5) on the template: joint attention, T5 expressions, video.

Sigma convention: CogVideoX is variance preserving with v-prediction, not a flow: at DDPM timestep
t the state is sqrt(ab) x0 + sqrt(1 - ab) eps (ab: its scheduler's SNR-shifted, zero-terminal-SNR
`alphas_cumprod`) and it predicts v = sqrt(ab) eps - sqrt(1 - ab) x0. The flow state at sigma,
(1 - sigma) x0 + sigma eps, is r times the VP state of the same signal-to-noise ratio
(sqrt(ab) = (1 - sigma) / r, sqrt(1 - ab) = sigma / r, r = |(1 - sigma, sigma)|): the model is
told the timestep of that ab (interpolated between its integer ones) and its v becomes eps - x0
(a flow Euler step is then a DDIM step). Levels below timestep 0's (2b 0.048, 5b 0.028: the least
noise it was trained at) are told timestep 0, as DDIM inversion starts. Its shift is its
pipeline's ("trailing") schedule, fraction f -> timestep 1000 f - 1: the paper's "timestep 750" in
CogVideoX's own unit is NoiseAt(0.75, shift=True) (sigma 0.905 on 2b, 0.844 on 5b).

The joint sequence is [expressions | caption | video]: one set of projections and norms for all
tokens, no mask (caption padding is attended), RoPE (5b, 1.5) on video tokens only. 2b adds
positions to [caption (zeros) | video] in its patch embedding, which fixes the caption at 226
tokens; the branch's tokens skip that table and get only `text_proj`, as a caption token does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb

from refam.errors import CheckpointError, ConfigError
from refam.extractors.branch import BranchProcessor, install, joint_branch
from refam.extractors.capture import BranchLayout
from refam.extractors.template import Latent, VideoDiTExtractor

class CogVideoXBranchProcessor(BranchProcessor):
    """`CogVideoXAttnProcessor2_0` with the branch first in the text stream."""

    stock_class = CogVideoXAttnProcessor2_0

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        text_len = encoder_hidden_states.shape[1]
        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        query, key, value = (proj(joint).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:  # video tokens only
            query = torch.cat([query[:, :text_len], apply_rotary_emb(query[:, text_len:], image_rotary_emb, sequence_dim=1)], 1)
            key = torch.cat([key[:, :text_len], apply_rotary_emb(key[:, text_len:], image_rotary_emb, sequence_dim=1)], 1)

        def main_attention(q, k, v):
            return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), dropout_p=0.0).transpose(1, 2)

        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), main_attention)
        out = attn.to_out[1](attn.to_out[0](out.flatten(2, 3)))
        return out[:, text_len:], out[:, :text_len]


class BranchSkipsPositions:
    """Hooks on `patch_embed`: while `branch_len` is set, the first `branch_len` text tokens bypass the
    stock module (2b's position table holds the caption only) and get its `text_proj` alone."""

    def __init__(self, patch_embed) -> None:
        self.branch_len, self.branch = 0, None
        patch_embed.register_forward_pre_hook(self.cut)
        patch_embed.register_forward_hook(self.join)

    def cut(self, module, args):
        if self.branch_len:
            text, video = args
            self.branch = text[:, : self.branch_len]
            return text[:, self.branch_len :], video

    def join(self, module, args, out):
        if self.branch is not None:
            branch, self.branch = module.text_proj(self.branch), None
            return torch.cat([branch, out], dim=1)


class CogVideoXExtractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from CogVideoX 1.0 (2b: 30 blocks, 5b: 42), per latent frame.

    Args (besides `VideoDiTExtractor`'s; native 480 x 720, 49 frames, clips of 4k + 1):
        caption_max_tokens: T5 length of the denoising prompt (226, padding attended; 2b needs exactly
            its `max_text_seq_length`).
    """

    checkpoint_layout = (
        "the folder of a CogVideoX text-to-video checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as THUDM/CogVideoX-5b")
    temporal_compression = 4  # AutoencoderKLCogVideoX
    temporal_patch = None  # 1.5 groups 2 latent frames per token

    def __init__(self, pretrained: str, height: int = 480, width: int = 720, clip_frames: int = 49,
                 caption_max_tokens: int = 226, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)

    def pipeline_class(self) -> type:
        from diffusers import CogVideoXPipeline

        return CogVideoXPipeline

    def check_pipeline(self, pipe) -> None:
        config = pipe.transformer.config
        if config.patch_size_t != self.temporal_patch:
            raise CheckpointError(f"its transformer patches {config.patch_size_t or 1} latent frames per token; use "
                                  + ("CogVideoX15Extractor" if config.patch_size_t == 2 else "CogVideoXExtractor"), field="pretrained")
        if config.in_channels != pipe.vae.config.latent_channels:
            raise CheckpointError("is an image-to-video checkpoint; use a text-to-video one", field="pretrained")
        if not config.use_rotary_positional_embeddings and self.caption_max_tokens != config.max_text_seq_length:
            raise ConfigError(f"must be {config.max_text_seq_length}: this model's position table fixes the caption "
                              "length", field="caption_max_tokens")
        ab = pipe.scheduler.alphas_cumprod.double()
        self.sigmas = ((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt())).numpy()  # rises with the timestep, 1 at 999

    def noise_shift(self, num_image_tokens: int):
        steps = len(self.sigmas)
        return lambda f: float(np.interp(steps * f - 1, np.arange(steps), self.sigmas))  # trailing spacing

    def install_branch(self, pipe) -> list[CogVideoXBranchProcessor]:
        self.embed_hooks = BranchSkipsPositions(pipe.transformer.patch_embed)
        return install(list(pipe.transformer.transformer_blocks), CogVideoXBranchProcessor, attribute="attn1")

    def placement_modules(self, pipe):
        return [pipe.text_encoder], pipe.transformer, [pipe.vae]

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """The inverse of CogVideoXPipeline.decode_latents: the VAE's mode times scaling_factor, [1, F, C, H, W]."""
        processor = self.pipe.video_processor
        pixels = torch.stack([processor.preprocess(f.convert("RGB"), height=self.height, width=self.width)[0] for f in frames], dim=1)[None]
        vae = self.pipe.vae
        latent = (vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor).transpose(1, 2)
        if self.temporal_patch and latent.shape[1] % self.temporal_patch:  # 1.5: latent 0 again in front, as its I2V does
            latent = torch.cat([latent[:, :1], latent], dim=1)
        _, frames_, _, lh, lw = latent.shape
        return Latent(latent.to(self.dtype), (frames_ // (self.temporal_patch or 1), lh // 2, lw // 2))

    def timestep(self, sigma: float) -> float:
        return float(np.interp(sigma, self.sigmas, np.arange(len(self.sigmas))))  # 0 below timestep 0's level

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, branch):
        """The flow velocity eps - x0 at the flow state x_t: CogVideoX's v at the VP state x_t / r, converted."""
        r = math.hypot(1.0 - sigma, sigma)
        a, b = (1.0 - sigma) / r, sigma / r  # sqrt(ab), sqrt(1 - ab)
        x = (x_t.float() / r).to(x_t.dtype)
        text = condition if branch is None else torch.cat([branch.to(condition.dtype), condition], dim=1)
        rope = None  # the pipeline's own RoPE for this grid (5b, 1.5); 2b adds its positions in patch_embed
        if self.pipe.transformer.config.use_rotary_positional_embeddings:
            rope = self.pipe._prepare_rotary_positional_embeddings(grid[1] * 16, grid[2] * 16, x.shape[1], self.device)
        self.embed_hooks.branch_len = 0 if branch is None else branch.shape[1]
        try:
            v = self.pipe.transformer(
                hidden_states=x, encoder_hidden_states=text, image_rotary_emb=rope, return_dict=False,
                timestep=torch.full((1,), self.timestep(sigma), device=self.device, dtype=torch.float32),
            )[0]
        finally:
            self.embed_hooks.branch_len = 0
        return (b - a) * x.float() + (a + b) * v.float()

    def branch_layout(self, encoded, condition: torch.Tensor) -> BranchLayout:
        return BranchLayout(caption_len=condition.shape[1], key_valid=encoded.valid)


class CogVideoX15Extractor(CogVideoXExtractor):
    """CogVideoX 1.5 (THUDM/CogVideoX1.5-5B): tokens of 2 latent frames, so clips of 8k + 1 frames
    (frame 0 alone in token frame 0, with its latent repeated; frames 8j - 7 .. 8j in token frame j).
    Native 768 x 1360, 81 frames."""

    temporal_compression = 8  # the VAE's 4 times 2 latent frames per token
    temporal_patch = 2

    def __init__(self, pretrained: str, height: int = 768, width: int = 1360, clip_frames: int = 81, **settings) -> None:
        super().__init__(pretrained, height, width, clip_frames, **settings)
