"""Mochi 1 (diffusers `MochiPipeline`) on the template: joint attention, T5 expressions, video.

Sigma convention: Mochi's transformer is told timestep 1000 (1 - sigma), the reverse of FLUX's
1000 sigma (its scheduler has `invert_sigmas`), and predicts x0 - eps. The paper's "timestep 990"
read in Mochi's convention is sigma = 0.01 (almost clean, the default), in FLUX's sigma = 0.99; the
paper does not settle which (docs/backbones.md). The VAE compresses time by 6, causally.

The branch rides as caption padding: the text stream is [caption | expressions] with an
`encoder_attention_mask` False on every branch token: the caption pooler leaves them out, as it
leaves out padding, `caption_proj` and the per-token text layers process them as every text token,
and only the joint attention (this module's processor) lets them look at the video. Text tokens get no RoPE; video tokens Mochi's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import MochiAttnProcessor2_0

from refam.errors import CheckpointError
from refam.extractors.branch import BranchProcessor, install, joint_branch, sdpa, stream_qkv
from refam.extractors.latents import Latent, channel_stats
from refam.extractors.video_template import VideoDiTExtractor


def apply_mochi_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Mochi's RoPE on [B, N, H, D] (interleaved even/odd pairs), as `MochiAttnProcessor2_0` applies it."""
    x_even, x_odd = x[..., 0::2].float(), x[..., 1::2].float()
    cos = (x_even * freqs_cos - x_odd * freqs_sin).to(x.dtype)
    sin = (x_even * freqs_sin + x_odd * freqs_cos).to(x.dtype)
    return torch.stack([cos, sin], dim=-1).flatten(-2)


class MochiBranchProcessor(BranchProcessor):
    """`MochiAttnProcessor2_0` with the branch after the caption: [video | caption | expressions]."""

    stock_class = MochiAttnProcessor2_0
    refused_arguments = ()  # the caption's mask: padding removed from the main stream as the stock processor does

    def with_branch(self, capture, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb):
        caption_len = capture.layout.caption_len
        if encoder_hidden_states.shape[1] != caption_len + capture.layout.branch_len:
            raise ValueError(f"the text sequence has {encoder_hidden_states.shape[1]} tokens; the branch layout expects "
                             f"{caption_len} caption + {capture.layout.branch_len} expression tokens")
        query, key, value = stream_qkv(attn, hidden_states)
        if image_rotary_emb is not None:  # video tokens only
            query, key = apply_mochi_rope(query, *image_rotary_emb), apply_mochi_rope(key, *image_rotary_emb)
        text = stream_qkv(attn, encoder_hidden_states, added=True)
        query, key, value = (torch.cat(pair, dim=1) for pair in zip((query, key, value), text))
        num_video = hidden_states.shape[1]

        def main_attention(q, k, v):  # the stock call: per item over [video | real caption tokens], the rest zero
            outputs = []
            for idx in range(q.shape[0]):
                caption = num_video + attention_mask[idx, :caption_len].flatten().nonzero().flatten()
                keep = torch.cat([torch.arange(num_video, device=caption.device), caption])
                out = sdpa(*(t[idx : idx + 1, keep] for t in (q, k, v)))
                outputs.append(F.pad(out, (0, 0, 0, 0, 0, q.shape[1] - out.shape[1])))
            return torch.cat(outputs, dim=0)

        out = joint_branch(capture, self.block_index, query, key, value, ("image", "caption", "branch"), main_attention)
        video_out, text_out = out.flatten(2, 3).split_with_sizes((num_video, out.shape[1] - num_video), dim=1)
        video_out = attn.to_out[1](attn.to_out[0](video_out))
        return video_out, attn.to_add_out(text_out) if hasattr(attn, "to_add_out") else text_out


@dataclass
class MochiCaption:
    embeds: torch.Tensor  # [1, Lc, D] T5, padded to caption_max_tokens
    mask: torch.Tensor  # [1, Lc] bool (Mochi removes the padding in attention)


class MochiExtractor(VideoDiTExtractor):
    """Cross-attention maps of referring expressions from Mochi's transformer, per latent frame.

    Args (besides `VideoDiTExtractor`'s; Mochi 1 has 48 blocks; native 480 x 848, clips of 6k + 1 frames):
        caption_max_tokens: T5 length of the denoising prompt (Mochi: 256, padding masked).
    """

    pipeline = "MochiPipeline"
    branch_first = False
    checkpoint_layout = (
        "the folder of a Mochi checkpoint in the diffusers layout (model_index.json, transformer/, vae/, "
        "text_encoder/, tokenizer/, scheduler/) or a hub id such as genmo/mochi-1-preview"
    )
    default_sigma = 0.01  # the paper's "timestep 990" in Mochi's own convention
    velocity_sign = -1
    temporal_compression = 6  # AutoencoderKLMochi: temporal_expansions (1, 2, 3)

    def __init__(self, pretrained: str, height: int = 480, width: int = 848, clip_frames: int = 25,
                 caption_max_tokens: int = 256, **settings) -> None:
        super().__init__(pretrained, height=height, width=width, clip_frames=clip_frames,
                         caption_max_tokens=caption_max_tokens, **settings)

    def check_pipeline(self, pipe) -> None:
        if pipe.vae.temporal_compression_ratio != self.temporal_compression:
            raise CheckpointError(f"the VAE compresses time by {pipe.vae.temporal_compression_ratio}, not "
                                  f"{self.temporal_compression} as Mochi's does", field="pretrained")

    def install_branch(self, pipe) -> list[MochiBranchProcessor]:
        return install(list(pipe.transformer.transformer_blocks), MochiBranchProcessor, attribute="attn1")

    def noise_shift(self, num_image_tokens: int):
        return None  # Mochi's pipeline schedules with linear_quadratic_schedule, not a shift

    @torch.inference_mode()
    def encode_caption(self, caption: str) -> MochiCaption:
        embeds, mask, _, _ = self.prompt(prompt=caption, do_classifier_free_guidance=False,
                                         max_sequence_length=self.caption_max_tokens)
        return MochiCaption(embeds=embeds.to(self.device, self.dtype), mask=mask.to(self.device).bool())

    @torch.inference_mode()
    def encode_clip(self, frames) -> Latent:
        """The inverse of MochiPipeline's decode normalisation: (z - mean) * scaling_factor / std."""
        latent = self.pipe.vae.encode(self.clip_pixels(frames)).latent_dist.mode()
        config = self.pipe.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean, std = channel_stats(config, latent)
            latent = (latent - mean) * config.scaling_factor / std
        else:
            latent = latent * config.scaling_factor
        _, _, frames_, lh, lw = latent.shape
        return Latent(latent.to(self.dtype), (frames_, lh // 2, lw // 2))

    def timestep(self, sigma: float) -> float:
        return 1000.0 * (1.0 - sigma)

    def denoise(self, x_t, sigma, grid, condition: MochiCaption, expressions):
        mask = condition.mask
        if expressions is not None:  # padding to everything but the branch
            mask = torch.cat([mask, mask.new_zeros(1, expressions.valid.numel())], dim=1)
        return self.pipe.transformer(
            hidden_states=x_t, encoder_hidden_states=self.join_text(condition.embeds, expressions), encoder_attention_mask=mask,
            timestep=self.timestep_tensor(sigma), return_dict=False,  # float32: 990 stays 990 (bfloat16 makes it 992)
        )[0]
