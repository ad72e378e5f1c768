"""The last stage of the pipeline: one point (and its heatmap) per expression → one mask; and, for a
segmenter that takes them, several points with labels (a user's corrections) → one mask."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import torch

from refam.config import Configurable
from refam.errors import ConfigError
from refam.types import Point

# the segmenters that take a user's points, for the error of one that does not
TAKING_POINTS = "FloodFillSegmenter or SAM2PointSegmenter (videos: FloodTrackSegmenter or SAM2VideoSegmenter)"


def points_refused(segmenter: object) -> ConfigError:
    """The error for a user's points given to a segmenter that cannot take them, naming its class."""
    return ConfigError(f"{type(segmenter).__name__} segments from the model's point alone and cannot take a "
                       f"user's points; give no points, or choose a segmenter that takes them: {TAKING_POINTS}")


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

    def segment_points(self, image: np.ndarray, prompts: Sequence[Sequence[Point]], heatmaps: torch.Tensor) -> np.ndarray:
        """Segment K expressions, each prompted by several points with labels: 1 "this", 0 "not
        this" (`refam.prompts.corrections` joins the model's point with a user's). An expression
        without a positive point gets an empty mask. `segment` is what runs without a user's points,
        so a segmenter that cannot take them (the default here) still serves every other call.

        Args:
            image: uint8 RGB, [H, W, 3].
            prompts: per expression, its points in image pixels (`Point.x`, `Point.y`, `Point.label`).
            heatmaps: float32 [K, H, W] at image resolution, min-max normalised to [0, 1].

        Returns:
            bool [K, H, W], one mask per expression.
        """
        raise points_refused(self)

    @property
    def takes_points(self) -> bool:
        """Whether `segment_points` is implemented (a user can correct this segmenter's masks)."""
        return type(self).segment_points is not Segmenter.segment_points


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


def check_prompt_inputs(image: np.ndarray, prompts: Sequence[Sequence[Point]], heatmaps: torch.Tensor) -> tuple[int, int, int]:
    """Validate the `Segmenter.segment_points` contract (as `check_segment_inputs`, with each point
    finite and labelled 0 or 1) and return (K, H, W)."""
    flat = [(p.x, p.y) for prompt in prompts for p in prompt]
    if not all(p.label in (0, 1) for prompt in prompts for p in prompt):
        raise ValueError("point labels must be 1 (this) or 0 (not this)")
    if not np.isfinite(np.asarray(flat, dtype=np.float64)).all():
        raise ValueError(f"points must be finite (x, y) in image pixels, got {flat}")
    return check_segment_inputs(image, np.zeros((len(prompts), 2)), heatmaps)
