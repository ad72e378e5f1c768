"""The video counterpart of `Segmenter`: one point on one frame → a mask on every frame; and, for a
video segmenter that takes them, several points with labels on that frame (a user's corrections)."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from refam.config import Configurable
from refam.errors import ConfigError, MissingInputError
from refam.segmenters.base import points_refused
from refam.types import Point

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

    def track_points(self, frames: Sequence[FramePath], frame_index: int,
                     points: Sequence[Point]) -> Iterator[tuple[int, np.ndarray]]:
        """As `track`, prompted by several points with labels on frame `frame_index`: 1 "this", 0
        "not this" (`refam.prompts.corrections`); no positive point: empty masks. `track` is what
        runs without a user's points, so a video segmenter that cannot take them (the default
        here) still serves every other call."""
        raise points_refused(self)

    @property
    def takes_points(self) -> bool:
        """Whether `track_points` is implemented (a user can correct this segmenter's masks)."""
        return type(self).track_points is not VideoSegmenter.track_points


def check_frames(frames: Sequence[FramePath], frame_index: int) -> list[str]:
    """Validate a video's frames and the key frame's index; returns the frame paths as strings.

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
    return paths


def check_track_inputs(frames: Sequence[FramePath], frame_index: int, point: tuple[float, float]) -> list[str]:
    """Validate the `VideoSegmenter.track` contract (`check_frames`, a finite point); returns the
    frame paths as strings."""
    paths = check_frames(frames, frame_index)
    if len(point) != 2 or not all(np.isfinite(v) for v in point):
        raise ConfigError(f"track: point must be a finite (x, y), got {point!r}")
    return paths


def check_track_points(frames: Sequence[FramePath], frame_index: int, points: Sequence[Point]) -> list[str]:
    """Validate the `VideoSegmenter.track_points` contract (`check_frames`, finite points labelled
    0 or 1); returns the frame paths as strings."""
    paths = check_frames(frames, frame_index)
    for point in points:
        if not (np.isfinite(point.x) and np.isfinite(point.y)) or point.label not in (0, 1):
            raise ConfigError(f"track: a point must be a finite (x, y) labelled 1 (this) or 0 (not this), got {point!r}")
    return paths


def check_in_frame(points: Sequence[tuple[float, float]], frame_index: int, size: tuple[int, int]) -> None:
    """Every (x, y) inside frame `frame_index` of `size` (width, height), or one line saying which is not."""
    width, height = size
    for x, y in points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise ConfigError(f"track: point (x={x}, y={y}) lies outside frame {frame_index} "
                              f"({width}x{height}); points are (x, y) in pixels")


def empty_track(frame_index: int, count: int, size: tuple[int, int]) -> Iterator[tuple[int, np.ndarray]]:
    """Empty masks of `size` (width, height) for each of `count` frames, in the trackers' order (key
    frame, later frames, earlier frames in reverse): a prompt without a positive point."""
    for index in [frame_index, *range(frame_index + 1, count), *range(frame_index - 1, -1, -1)]:
        yield index, np.zeros(size[::-1], dtype=bool)
