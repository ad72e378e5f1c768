"""The last stage of the pipeline: one point (and its heatmap) per expression → one mask."""

from __future__ import annotations

import abc

import numpy as np
import torch

from refam.config import Configurable


class Segmenter(Configurable, abc.ABC):
    """Turns the argmax point of each expression's heatmap into a binary mask.

    Subclasses are chosen by `class_path` in the YAML config; heavy weights are loaded in
    `setup`, not `__init__`, so that configs parse (and fail) before anything large is read.
    """

    def setup(self, device: torch.device) -> None:
        """Load weights onto `device`. Called once per process; calling it again is harmless."""

    @abc.abstractmethod
    def segment(self, image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> np.ndarray:
        """Segment K expressions of one image.

        Args:
            image: uint8 RGB, [H, W, 3].
            points: float [K, 2], (x, y) in image pixels, one per expression.
            heatmaps: float32 [K, H, W] at image resolution, min-max normalised to [0, 1].

        Returns:
            bool [K, H, W], one mask per expression.
        """


def check_segment_inputs(image: np.ndarray, points: np.ndarray, heatmaps: torch.Tensor) -> tuple[int, int, int]:
    """Validate the `Segmenter.segment` contract and return (K, H, W).

    A transposed point array or a heatmap left at token-grid resolution would otherwise give
    plausible-looking but wrong masks, so both are rejected here.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {tuple(image.shape)}")
    height, width = image.shape[:2]
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must be [K, 2] (x, y), got shape {tuple(points.shape)}")
    k = points.shape[0]
    if tuple(heatmaps.shape) != (k, height, width):
        raise ValueError(
            f"heatmaps must be [K, H, W] = {(k, height, width)} (image resolution, one per point), "
            f"got {tuple(heatmaps.shape)}"
        )
    return k, height, width
