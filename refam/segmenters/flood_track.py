"""A video segmenter that needs no weights: the key frame's flood-fill region, followed frame by
frame by its colour, as SAM2's propagation follows an object on flat-coloured scenes.

On the key frame the object is `FloodFillSegmenter`'s region under the point. Its reference colour
is that region's median colour, so JPEG noise on the seed pixel does not bias what follows. A point
on a small shape's JPEG-blended edge floods only that edge's ring; then the ring's inside is the
object's colour and joins the region (`blended_edge_interior`). On every
frame, the key frame first (its "previous mask" is the flood fill), then forward to the end, then
backward from the key frame to frame 0, the pixels within `tolerance` of the reference colour are
split into 8-connected components, and the object is:

1. the components that overlap the previous mask (the object moved less than its own size), else
2. the component nearest to where the object should be (its last centroid advanced by its last
   velocity, once per frame it was not seen), within `search_radius` times the object's size (fast
   motion; the first step from the key frame, with no velocity yet, reaches that far), else
3. nothing: an empty mask, the last known mask and velocity kept to re-acquire it later (it left
   the frame or is hidden).

Each frame's region then takes in its rim: the pixels next to it (up to `RIM` deep) whose colour is
nearer the reference colour than the colour around the region there. JPEG (4:2:0, as PIL and most
cameras write it) halves the colour resolution, so at an edge where only the hue changes the
pixels just inside are blended with the outside by more than any sensible tolerance; without the
rim a 16-pixel circle loses a fifth of its area.

A point on the background makes the background "the object", followed the same way.

Several points with labels (`track_points`, a user's corrections) are followed each as one point
is, and on every frame the mask is the union of the positive points' regions minus the negative
points' (on the key frame, `FloodFillSegmenter`'s mask for those points, each region refined as
above); the frames are read once per point.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from refam.errors import ConfigError
from refam.io.frames import read_frame
from refam.segmenters.floodfill import check_tolerance, flood_region, seed_pixel
from refam.segmenters.video_base import (FramePath, VideoSegmenter, check_in_frame, check_track_inputs,
                                        check_track_points, empty_track)
from refam.types import Point


RIM = 2  # pixels: how far 4:2:0 chroma upsampling blends an edge
# the surroundings: pixels 3-4 from the region (past the blend), averaged over an 11 x 11 window,
# which reaches them from any rim pixel
_INNER, _OUTER, _WINDOW = 5, 9, 11


def surroundings(region: np.ndarray) -> np.ndarray:
    """The bool [H, W] band 3-4 pixels out from `region`: past the blend at its edge, still near it."""
    near, far = (cv2.dilate(region.astype(np.uint8), np.ones((k, k), np.uint8)) for k in (_INNER, _OUTER))
    return far > near


def with_rim(frame: np.ndarray, core: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`core` (bool [H, W]) and the pixels up to `RIM` from it whose colour is nearer `reference`
    than the mean colour of the region's surroundings nearby (pixels 3-4 away from it)."""
    pixels = frame.astype(np.float32)
    ring = surroundings(core).astype(np.float32)
    window = (_WINDOW, _WINDOW)
    count = cv2.boxFilter(ring, -1, window, normalize=False)
    around = cv2.boxFilter(pixels * ring[..., None], -1, window, normalize=False) / np.maximum(count, 1)[..., None]
    nearer = (((pixels - reference) ** 2).sum(axis=2) < ((pixels - around) ** 2).sum(axis=2)) & (count > 0)
    mask = core.copy()
    for _ in range(RIM):
        mask |= cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & nearer
    return mask


def enclosed(region: np.ndarray) -> np.ndarray:
    """The pixels outside `region` (bool [H, W]) that it encloses: not 4-connected to the frame's border."""
    _, labels = cv2.connectedComponents((~region).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (labels > 0) & ~np.isin(labels, border)


def _depth(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest pixel outside `mask` (the frame's border counts as outside)."""
    return cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]


def blended_edge_interior(frame: np.ndarray, region: np.ndarray, tolerance: int) -> np.ndarray | None:
    """When the seed fell on a shape's JPEG-blended edge, the shape's flat inside; else None.

    Chroma blending darkens or tints the outer 2-3 pixels of a small saturated shape by more than
    the tolerance, so a seed there floods only that ring. The ring betrays itself: it is no wider
    than a blend (`RIM` + 1 pixels deep at most: a wider band around another colour is an object
    around another object, which stays as it is), the deepest pixel of the ring with its holes
    filled lies in a hole, and that hole's colour is not the colour around the ring (where a
    ring-shaped object shows its background through its hole, the two match). A hole smaller than
    a quarter of the ring (a JPEG speckle inside a flat region) is not an inside either."""
    holes = enclosed(region)
    if not holes.any() or _depth(region).max() > RIM + 1:  # a band wider than a blend: an object around another
        return None
    filled = region | holes
    depth = _depth(filled)
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    if not holes[y, x]:
        return None
    inside = flood_region(frame, (int(x), int(y)), tolerance) & filled
    if inside.sum() < 0.25 * region.sum():
        return None
    around = surroundings(filled)
    if around.any() and np.abs(np.median(frame[inside], axis=0) - np.median(frame[around], axis=0)).max() <= tolerance:
        return None
    return inside


def centroid(mask: np.ndarray) -> np.ndarray:
    """The (x, y) mean of a non-empty mask's pixels."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@dataclass
class _Course:
    """Where the followed object was last seen: its mask, centroid and velocity (pixels per frame)."""

    mask: np.ndarray
    centre: np.ndarray
    velocity: np.ndarray
    frames_unseen: int = 0

    def seen(self, mask: np.ndarray) -> None:
        centre = centroid(mask)
        self.velocity = (centre - self.centre) / (self.frames_unseen + 1)
        self.mask, self.centre, self.frames_unseen = mask, centre, 0


class FloodTrackSegmenter(VideoSegmenter):
    """Follows the flood-fill region of the key frame's point through a video by its colour (see
    the module docstring). Exact on flat-coloured shapes that do not touch one another.

    Masks come in `SAM2VideoSegmenter`'s order: key frame, later frames in order, then earlier
    frames in reverse order, every frame once. One frame is read at a time; the previous mask is
    kept, and the key frame's for the backward pass.

    Args:
        tolerance: per-channel colour distance (0-255): `FloodFillSegmenter`'s from the seed pixel
            picks the object on the key frame; on every frame its pixels are those within it of the
            key region's median colour.
        search_radius: how far from its expected centre a lost or fast object is looked for, in
            multiples of its size (the longer side of the key region's bounding box).
        min_area: the smallest share of the key region's area a component must cover to be taken
            for the object when it does not overlap the previous mask (so that a few pixels of a
            matching colour elsewhere, e.g. JPEG ringing, are not taken for it).
    """

    def __init__(self, tolerance: int = 24, search_radius: float = 2.0, min_area: float = 0.05) -> None:
        self.tolerance = check_tolerance(tolerance)
        if not (np.isfinite(search_radius) and search_radius > 0):
            raise ConfigError(f"must be a positive number of object sizes, got {search_radius}", field="search_radius")
        if not 0 <= min_area <= 1:
            raise ConfigError(f"must be a share of the key region's area in [0, 1], got {min_area}", field="min_area")
        self.search_radius, self.min_area = float(search_radius), float(min_area)

    def track(self, frames: Sequence[FramePath], frame_index: int, point: tuple[float, float]) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, bool [H, W] mask) for every frame, in the class docstring's order. Inputs
        are checked now (every frame exists, the point lies in the key frame), not on `next()`."""
        paths = check_track_inputs(frames, frame_index, point)
        key = read_frame(paths[frame_index])
        height, width = key.shape[:2]
        x, y = (float(v) for v in point)
        check_in_frame([(x, y)], frame_index, (width, height))
        core = flood_region(key, seed_pixel(x, y, width, height), self.tolerance)
        interior = blended_edge_interior(key, core, self.tolerance)
        if interior is not None:  # the seed was on the blended edge: the inside holds the object's colour
            core = core | interior
        reference = np.median(key[core if interior is None else interior], axis=0)
        rows, cols = np.nonzero(core)
        size = max(np.ptp(rows), np.ptp(cols)) + 1
        # The key region too is taken by the reference colour (the components overlapping the
        # flood fill), so that a click on a pixel of extreme noise leaves no holes.
        found = self._find(key, reference, _Course(core, centroid(core), np.zeros(2)), size, core.sum())
        key_mask = found if found.any() else core  # no pixel near the median colour: keep the fill
        return self._follow(paths, frame_index, key_mask, reference, size)

    def track_points(self, frames: Sequence[FramePath], frame_index: int,
                     points: Sequence[Point]) -> Iterator[tuple[int, np.ndarray]]:
        """(frame index, bool [H, W] mask) for every frame, in `track`'s order: the union of the
        positive points' followed regions minus the negative points' (the module docstring).
        Inputs are checked now, not on `next()`."""
        paths = check_track_points(frames, frame_index, points)
        height, width = read_frame(paths[frame_index]).shape[:2]
        check_in_frame([(p.x, p.y) for p in points], frame_index, (width, height))
        if not any(p.label == 1 for p in points):
            return empty_track(frame_index, len(paths), (width, height))
        followed = [self.track(paths, frame_index, (p.x, p.y)) for p in points]
        return _joined([p.label for p in points], followed)

    def _follow(self, paths: list[str], frame_index: int, key_mask: np.ndarray, reference: np.ndarray,
                size: int) -> Iterator[tuple[int, np.ndarray]]:
        yield frame_index, key_mask
        video_size = key_mask.shape[::-1]
        start, key_area = centroid(key_mask), key_mask.sum()
        for step in (1, -1):
            course = _Course(key_mask, start, np.zeros(2))
            for index in range(frame_index + step, len(paths) if step > 0 else -1, step):
                mask = self._find(read_frame(paths[index], video_size), reference, course, size, key_area)
                if mask.any():
                    course.seen(mask)
                else:
                    course.frames_unseen += 1
                yield index, mask

    def _find(self, frame: np.ndarray, reference: np.ndarray, course: _Course, size: int, key_area: int) -> np.ndarray:
        """The object's mask in `frame` (empty where it is not found), by the module docstring's rules."""
        lo = np.clip(np.round(reference) - self.tolerance, 0, 255).astype(np.uint8)
        hi = np.clip(np.round(reference) + self.tolerance, 0, 255).astype(np.uint8)
        count, labels, stats, centres = cv2.connectedComponentsWithStats(cv2.inRange(frame, lo, hi), connectivity=8)
        overlapping = np.unique(labels[course.mask])
        overlapping = overlapping[overlapping > 0]
        if overlapping.size:
            return with_rim(frame, np.isin(labels, overlapping), reference)
        expected = course.centre + course.velocity * (course.frames_unseen + 1)
        candidates = [c for c in range(1, count) if stats[c, cv2.CC_STAT_AREA] >= self.min_area * key_area]
        distances = np.hypot(*(centres[candidates] - expected).T) if candidates else np.array([np.inf])
        nearest = int(np.argmin(distances))
        if distances[nearest] > self.search_radius * size:
            return np.zeros(frame.shape[:2], dtype=bool)
        return with_rim(frame, labels == candidates[nearest], reference)


def _joined(labels: list[int], followed: list[Iterator[tuple[int, np.ndarray]]]) -> Iterator[tuple[int, np.ndarray]]:
    """Per frame, the union of the masks followed from positive points (label 1) minus the union of
    those followed from negative points (label 0); every track yields the frames in one order."""
    for steps in zip(*followed):
        masks = {label: [mask for (_, mask), own in zip(steps, labels) if own == label] for label in (0, 1)}
        added = np.logical_or.reduce(masks[1])
        yield steps[0][0], added & ~np.logical_or.reduce(masks[0]) if masks[0] else added
