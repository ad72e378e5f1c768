"""A segmenter that needs no weights: the colour region around the prompted point (OpenCV flood fill)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from refam.errors import ConfigError
from refam.segmenters.base import Segmenter, check_prompt_inputs, check_segment_inputs
from refam.types import Point


def check_tolerance(tolerance: int) -> int:
    """A per-channel colour tolerance (0-255), or a `ConfigError` naming the `tolerance` field."""
    if not 0 <= tolerance <= 255:
        raise ConfigError(f"must be in [0, 255], got {tolerance}", field="tolerance")
    return tolerance


def seed_pixel(x: float, y: float, width: int, height: int) -> tuple[int, int]:
    """The (column, row) of the pixel a point (x, y) in pixels lands on, clamped into the image
    (a point on the right or bottom edge, x = width, lands on the last pixel)."""
    return int(min(max(np.floor(x), 0), width - 1)), int(min(max(np.floor(y), 0), height - 1))


def flood_region(image: np.ndarray, seed: tuple[int, int], tolerance: int) -> np.ndarray:
    """The bool [H, W] 8-connected region around `seed` (column, row) of `image` (uint8 [H, W, 3])
    whose colour stays within `tolerance` per channel of the seed pixel's colour."""
    height, width = image.shape[:2]
    source = np.array(image, copy=True)  # OpenCV wants a writable image even with MASK_ONLY
    region = np.zeros((height + 2, width + 2), dtype=np.uint8)  # OpenCV wants a 1-pixel border
    flags = 8 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
    cv2.floodFill(source, region, seed, (0, 0, 0), (tolerance,) * 3, (tolerance,) * 3, flags)
    return region[1:-1, 1:-1] > 0


def flood_prompt(image: np.ndarray, prompt: Sequence[Point], tolerance: int) -> np.ndarray:
    """The bool [H, W] union of the regions flooded from `prompt`'s positive points minus the
    union of those flooded from its negative points (empty without a positive point)."""
    height, width = image.shape[:2]
    regions = {0: np.zeros((height, width), dtype=bool), 1: np.zeros((height, width), dtype=bool)}
    for point in prompt:
        regions[point.label] |= flood_region(image, seed_pixel(point.x, point.y, width, height), tolerance)
    return regions[1] & ~regions[0]


class FloodFillSegmenter(Segmenter):
    """Answers a point prompt as SAM2 would on flat-coloured scenes: the 8-connected region whose
    colour stays within `tolerance` (per channel, 0-255) of the prompted pixel's colour.

    It segments whatever the point lands on, background included, so a wrong point gives the
    mask SAM2 would most likely give too: the wrong region. Several points with labels
    (`segment_points`, a user's corrections) give the union of the regions flooded from the
    positive points minus the regions flooded from the negative ones (`flood_prompt`).
    """

    def __init__(self, tolerance: int = 24) -> None:
        self.tolerance = check_tolerance(tolerance)

    def segment(self, image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> np.ndarray:
        k, height, width = check_segment_inputs(image, points, heatmaps)
        masks = np.zeros((k, height, width), dtype=bool)
        for i, (x, y) in enumerate(points):
            masks[i] = flood_region(image, seed_pixel(x, y, width, height), self.tolerance)
        return masks

    def segment_points(self, image: np.ndarray, prompts: Sequence[Sequence[Point]], heatmaps: torch.Tensor) -> np.ndarray:
        k, height, width = check_prompt_inputs(image, prompts, heatmaps)
        masks = np.zeros((k, height, width), dtype=bool)
        for i, prompt in enumerate(prompts):
            masks[i] = flood_prompt(image, prompt, self.tolerance)
        return masks
