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


def argmax_points(heatmaps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[K, h, w] token-grid maps -> [K, 2] (x, y): the centre, in image pixels, of each map's best cell.

    The argmax is taken on the grid, not on the upsampled map: bilinear upsampling is flat between
    an edge cell's centre and the image border, where an upsampled argmax would return the corner.
    """
    _, rows, cols = heatmaps.shape
    index = heatmaps.flatten(1).argmax(dim=1)
    r, c = index // cols, index % cols
    return torch.stack([(c.double() + 0.5) * width / cols, (r.double() + 0.5) * height / rows], dim=1).float()
