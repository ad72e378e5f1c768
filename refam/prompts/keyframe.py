"""Which video frame the point prompt goes on.

The paper localises in the first frame and lets SAM2 propagate forward, and names that as a
limitation (the target must be visible and salient in frame 0). "confident" instead picks, per
expression, the latent frame whose heatmap peaks highest and prompts the video frame in the middle
of the frames that latent covers; SAM2 then propagates forward and backward from it.
"""

from __future__ import annotations

import torch

KEY_FRAMES = ("first", "confident")


def frames_of_latent(frame_to_latent: list[int], latent: int) -> list[int]:
    """The video frames a latent frame covers (the VAE compresses time)."""
    return [f for f, k in enumerate(frame_to_latent) if k == latent]


def key_frames(heatmaps: torch.Tensor, frame_to_latent: list[int], mode: str) -> list[int]:
    """heatmaps [K, F_lat, h, w] normalised jointly over each expression's frames -> the video
    frame to prompt, per expression."""
    if mode not in KEY_FRAMES:
        raise ValueError(f"key frame mode must be one of {KEY_FRAMES}, got {mode!r}")
    if mode == "first":
        return [0] * heatmaps.shape[0]
    peaks = heatmaps.flatten(2).max(dim=2).values  # [K, F_lat]; comparable: one min-max per expression
    chosen = []
    for latent in peaks.argmax(dim=1).tolist():
        frames = frames_of_latent(frame_to_latent, latent)
        chosen.append(frames[len(frames) // 2] if frames else 0)
    return chosen
