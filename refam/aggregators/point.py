"""Heatmap -> the point that prompts the segmenter, in image pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(heatmaps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[K, h, w] token-grid maps -> [K, height, width] image-resolution maps.

    The token grid covers the whole image (it was resized, not cropped), so cell (i, j) spans rows
    [i*height/h, (i+1)*height/h); bilinear with align_corners=False keeps cell centres at pixel
    positions ((i + 0.5) * height / h).
    """
    return F.interpolate(heatmaps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def argmax_points(image_heatmaps: torch.Tensor) -> torch.Tensor:
    """[K, H, W] -> [K, 2] (x, y) pixel centres of each map's maximum (first one on ties)."""
    k, _, width = image_heatmaps.shape
    index = image_heatmaps.flatten(1).argmax(dim=1)
    rows, cols = index // width, index % width
    return torch.stack([cols.float() + 0.5, rows.float() + 0.5], dim=1)
