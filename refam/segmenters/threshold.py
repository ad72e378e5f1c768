"""A segmenter without a segmentation model: threshold the heatmap itself.

Useful as an ablation (how much does SAM add over the attention map?) and as a dependency-free
segmenter for smoke runs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from refam.errors import ConfigError
from refam.segmenters.base import Segmenter, check_segment_inputs

# 8-connectivity: diagonal neighbours join a component, so a thin diagonal blob stays whole.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class HeatmapThresholdSegmenter(Segmenter):
    """mask = heatmap >= threshold, optionally only the blob that holds the point.

    Args:
        threshold: on the min-max normalised heatmap, in [0, 1].
        connected_to_point: keep only the 8-connected component containing the point's pixel.
            If that pixel is below the threshold, the component containing the nearest
            above-threshold pixel is kept; if no pixel reaches the threshold the mask is empty.
    """

    def __init__(self, threshold: float = 0.5, connected_to_point: bool = True) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"must be in [0, 1] (heatmaps are min-max normalised), got {threshold}", field="threshold")
        self.threshold = threshold
        self.connected_to_point = connected_to_point

    def segment(self, image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> np.ndarray:
        k, height, width = check_segment_inputs(image, points, heatmaps)
        maps = heatmaps.detach().to("cpu", torch.float32).numpy()
        masks = maps >= self.threshold
        if not self.connected_to_point:
            return masks
        out = np.zeros((k, height, width), dtype=bool)
        for i in range(k):
            out[i] = _component_at(masks[i], points[i])
        return out


def _component_at(mask: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The connected component of `mask` that holds `point` (x, y), or the one nearest to it."""
    if not mask.any():
        return mask
    height, width = mask.shape
    # Pixel i covers [i, i + 1), the same convention SAM's coordinate transform uses.
    row = int(np.clip(np.floor(point[1]), 0, height - 1))
    col = int(np.clip(np.floor(point[0]), 0, width - 1))
    labels, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if not mask[row, col]:
        on = np.argwhere(mask)
        nearest = on[np.argmin(((on - (row, col)) ** 2).sum(axis=1))]
        row, col = int(nearest[0]), int(nearest[1])
    return labels == labels[row, col]
