"""Clean latents as the stock pipelines make them: the `Latent` a backbone's encoder returns (the
tensor and its image-token grid), the image size a resolution gives, and the VAE normalisations the
image-conditioned pipelines apply (`vae_latent`; per-channel `normalized`, `channel_stats`); `patched_latent` for
a transformer that patchifies the latent itself."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Latent:
    """A clean latent in the layout the denoiser takes, and its image-token grid.

    grid = (frames, rows, cols): the image tokens are frame-major, then row-major (token n is
    frame n // (rows cols), row (n // cols) % rows, column n % cols); images have one frame."""

    x0: torch.Tensor
    grid: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)


def resize_to(width: int, height: int, resolution: int, keep_aspect: bool, multiple: int) -> tuple[int, int]:
    """(height, width) an image is resized to: resolution x resolution (ConceptAttention's
    convention), or about resolution^2 pixels at its aspect ratio with `keep_aspect`, in multiples
    of `multiple` (the VAE's factor times the patch size)."""
    if not keep_aspect:
        return resolution, resolution
    scale = (resolution**2 / (width * height)) ** 0.5
    return (max(multiple, round(height * scale / multiple) * multiple), max(multiple, round(width * scale / multiple) * multiple))


def channel_stats(config, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A VAE config's per-channel `latents_mean` and `latents_std`, shaped to broadcast over a
    latent like `like` [B, C, ...], made in float32 and cast to its dtype, as the pipelines do."""
    shape = (1, -1) + (1,) * (like.dim() - 2)
    return tuple(torch.tensor(v).view(shape).to(like.device, like.dtype) for v in (config.latents_mean, config.latents_std))


def normalized(latent: torch.Tensor, config) -> torch.Tensor:
    """(z - latents_mean) / latents_std per channel, as the Wan and Qwen-Image image-conditioned
    pipelines compute it, in z's dtype: the statistics cast to it, then times the reciprocal."""
    mean, std = channel_stats(config, latent)
    return (latent - mean) * (1.0 / std)


def vae_latent(pipe, pixels: torch.Tensor, shifted: bool = True) -> torch.Tensor:
    """The clean latent [1, C, h, w] of preprocessed pixels, normalised as image-to-image pipelines
    do, (z - shift_factor) * scaling_factor, from the distribution's mode (a sample would add noise).
    A VAE whose config has no `shift_factor` (None: SD's, SDXL's, PixArt's), or a family whose pipelines
    ignore it (`shifted=False`: CogView4's), is not shifted: z * scaling_factor."""
    latent = pipe.vae.encode(pixels).latent_dist.mode()
    shift = pipe.vae.config.get("shift_factor", None) if shifted else None
    return (latent if shift is None else latent - shift) * pipe.vae.config.scaling_factor


def patched_latent(latent: torch.Tensor, dtype: torch.dtype, patch: int) -> Latent:
    """A clean latent [1, C, h, w] that the transformer patchifies itself, `patch` x `patch` cells a token,
    row-major (SD3, PixArt, Z-Image, Lumina 2)."""
    _, _, lh, lw = latent.shape
    return Latent(latent.to(dtype), (1, lh // patch, lw // patch))
