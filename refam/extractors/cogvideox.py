"""CogVideoX (diffusers `CogVideoXPipeline`: 2b, 5b, 1.5) on the template: joint attention, T5 expressions, video.

Sigma convention: variance preserving with v-prediction, seen as a flow (`refam.extractors.vp`: told
the DDPM timestep of sigma's signal-to-noise ratio, its v turned into eps - x0). `shift=True` reads
sigma on its pipeline's "trailing" schedule (configs/backbones/cogvideox.yaml gives the numbers).

The joint sequence is [expressions | caption | video]: one set of projections and norms for all
tokens, no mask (caption padding is attended), RoPE (5b, 1.5) on video tokens only. 2b's patch
embedding adds positions to [caption | video] for a caption of exactly 226 tokens; the branch's
tokens skip it and get only `text_proj`, as a caption token does.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from refam.errors import CheckpointError, ConfigError
from refam.extractors.branch import BranchProcessor, install, joint_branch, sdpa, video_text_qkv
from refam.extractors.latents import Latent
from refam.extractors.video_template import VideoDiTExtractor
from refam.extractors.vp import VPFlow


class CogVideoXBranchProcessor(BranchProcessor):
    """`CogVideoXAttnProcessor2_0` with the branch first in the text stream."""

    stock_class = CogVideoXAttnProcessor2_0

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        text_len = encoder_hidden_states.shape[1]
        query, key, value = video_text_qkv(attn, hidden_states, encoder_hidden_states, image_rotary_emb, video_first=False)
        out = joint_branch(capture, self.block_index, query, key, value, ("branch", "caption", "image"), sdpa)
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

    pipeline = "CogVideoXPipeline"
    checkpoint_layout = (
        "the folder of a CogVideoX text-to-video checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as THUDM/CogVideoX-5b")
    temporal_compression = 4  # AutoencoderKLCogVideoX
    temporal_patch = None  # 1.5 groups 2 latent frames per token

    def __init__(self, pretrained: str, height: int = 480, width: int = 720, clip_frames: int = 49,
                 caption_max_tokens: int = 226, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)

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
        self.vp = VPFlow(pipe.scheduler.alphas_cumprod, pipe.scheduler.config.prediction_type)

    def noise_shift(self, num_image_tokens: int):
        return self.vp.trailing  # its pipeline's timestep spacing

    def install_branch(self, pipe) -> list[CogVideoXBranchProcessor]:
        self.embed_hooks = BranchSkipsPositions(pipe.transformer.patch_embed)
        return install(list(pipe.transformer.transformer_blocks), CogVideoXBranchProcessor, attribute="attn1")

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """The inverse of CogVideoXPipeline.decode_latents: the VAE's mode times scaling_factor, [1, F, C, H, W]."""
        vae = self.pipe.vae
        latent = (vae.encode(self.clip_pixels(frames)).latent_dist.mode() * vae.config.scaling_factor).transpose(1, 2)
        if self.temporal_patch and latent.shape[1] % self.temporal_patch:  # 1.5: latent 0 again in front, as its I2V does
            latent = torch.cat([latent[:, :1], latent], dim=1)
        _, frames_, _, lh, lw = latent.shape
        return Latent(latent.to(self.dtype), (frames_ // (self.temporal_patch or 1), lh // 2, lw // 2))

    def timestep(self, sigma: float) -> float:
        return self.vp.timestep(sigma)

    def denoise(self, x_t, sigma, grid, condition: torch.Tensor, expressions):
        """The flow velocity eps - x0 at the flow state x_t: CogVideoX's v at the matching VP state, converted."""
        x, text = self.vp.state(x_t, sigma), self.join_text(condition, expressions)
        rope = None  # the pipeline's own RoPE table for the clip (5b, 1.5); 2b adds its positions in patch_embed
        if self.pipe.transformer.config.use_rotary_positional_embeddings:
            rope = self.pipe._prepare_rotary_positional_embeddings(self.height, self.width, x.shape[1], self.device)
        self.embed_hooks.branch_len = 0 if expressions is None else expressions.valid.numel()
        try:
            v = self.pipe.transformer(
                hidden_states=x, encoder_hidden_states=text, image_rotary_emb=rope, timestep=self.timestep_tensor(sigma),
                return_dict=False,
            )[0]
        finally:
            self.embed_hooks.branch_len = 0
        return self.vp.flow_velocity(v, x, sigma)


class CogVideoX15Extractor(CogVideoXExtractor):
    """CogVideoX 1.5 (THUDM/CogVideoX1.5-5B): tokens of 2 latent frames, so clips of 8k + 1 frames
    (frame 0 alone in token frame 0, with its latent repeated; frames 8j - 7 .. 8j in token frame j).
    Native 768 x 1360, 81 frames."""

    temporal_compression = 8  # the VAE's 4 times 2 latent frames per token
    temporal_patch = 2

    def __init__(self, pretrained: str, height: int = 768, width: int = 1360, clip_frames: int = 81, **settings) -> None:
        super().__init__(pretrained, height, width, clip_frames, **settings)
