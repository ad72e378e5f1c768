"""A segmenter that needs no weights: the colour region around the prompted point (OpenCV flood fill)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from refam.errors import ConfigError
from refam.segmenters.base import Segmenter, check_segment_inputs


class FloodFillSegmenter(Segmenter):
    """Answers a point prompt as SAM2 would on flat-coloured scenes: the 8-connected region whose
    colour stays within `tolerance` (per channel, 0-255) of the prompted pixel's colour.

    It segments whatever the point lands on, background included, so a wrong point gives the
    mask SAM2 would most likely give too: the wrong region.
    """

    def __init__(self, tolerance: int = 24) -> None:
        if not 0 <= tolerance <= 255:
            raise ConfigError(f"must be in [0, 255], got {tolerance}", field="tolerance")
        self.tolerance = tolerance

    def segment(self, image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> np.ndarray:
        k, height, width = check_segment_inputs(image, points, heatmaps)
        masks = np.zeros((k, height, width), dtype=bool)
        source = np.array(image, copy=True)  # OpenCV wants a writable image even with MASK_ONLY
        tolerance = (self.tolerance,) * 3
        flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
        for i, (x, y) in enumerate(points):
            seed = (int(min(max(np.floor(x), 0), width - 1)), int(min(max(np.floor(y), 0), height - 1)))
            region = np.zeros((height + 2, width + 2), dtype=np.uint8)  # OpenCV wants a 1-pixel border
            cv2.floodFill(source, region, seed, (0, 0, 0), tolerance, tolerance, flags)
            masks[i] = region[1:-1, 1:-1] > 0
        return masks
