"""The video counterpart of `Segmenter`: one point on one frame → a mask on every frame."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from refam.config import Configurable
from refam.errors import ConfigError, MissingInputError

FramePath = str | os.PathLike


class VideoSegmenter(Configurable, abc.ABC):
    """Turns one positive click on one frame of a video into a mask on every frame.

    Subclasses are chosen by `class_path` in the YAML config; heavy weights are loaded in
    `setup`, not `__init__`, so that configs parse (and fail) before anything large is read.
    Videos are lists of frame files read on demand, and masks come back one frame at a time,
    so neither a video's frames nor its masks need to be in memory at once.
    """

    def setup(self, device: torch.device) -> None:
        """Load weights onto `device`. Called once per process; calling it again is harmless."""

    @abc.abstractmethod
    def track(self, frames: Sequence[FramePath], frame_index: int, point: tuple[float, float]) -> Iterator[tuple[int, np.ndarray]]:
        """Segment the object under `point` throughout the video.

        Args:
            frames: paths of the frame images in temporal order (all of one size).
            frame_index: the frame the point was chosen on.
            point: (x, y) in that frame's pixels, a positive click.

        Yields:
            (frame index, bool [H, W] mask at the frames' original size), every frame exactly once.
        """


def check_track_inputs(frames: Sequence[FramePath], frame_index: int, point: tuple[float, float]) -> list[str]:
    """Validate the `VideoSegmenter.track` contract; returns the frame paths as strings.

    Every path is checked before any model runs, so a missing frame fails at once rather than
    after minutes of propagation.
    """
    paths = [os.fspath(p) for p in frames]
    if not paths:
        raise ConfigError("track: the video has no frames")
    if not 0 <= frame_index < len(paths):
        raise ConfigError(f"track: frame_index {frame_index} is outside the video's {len(paths)} frames")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MissingInputError(f"video frame not found: {missing[0]}{more}")
    if len(point) != 2 or not all(np.isfinite(v) for v in point):
        raise ConfigError(f"track: point must be a finite (x, y), got {point!r}")
    return paths
