"""The segmenter contract for a user's points: a segmenter written before points existed (only
`segment`) keeps working without points and refuses them in one line naming its class."""

import numpy as np
import pytest
import torch

from refam.errors import ConfigError
from refam.segmenters import FloodFillSegmenter, FloodTrackSegmenter, HeatmapThresholdSegmenter, Segmenter
from refam.segmenters import SAM2PointSegmenter, SAM2VideoSegmenter, VideoSegmenter
from refam.types import Point


class CentreSquare(Segmenter):
    """A third-party segmenter of the old contract: a 3 x 3 square around each point."""

    def segment(self, image, points, heatmaps):
        masks = np.zeros((len(points), *image.shape[:2]), dtype=bool)
        for mask, (x, y) in zip(masks, points.astype(int)):
            mask[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = True
        return masks


class StillFrames(VideoSegmenter):
    def track(self, frames, frame_index, point):
        yield from ()


def test_a_segmenter_without_points_still_segments_and_refuses_points_naming_its_class():
    image = np.zeros((8, 12, 3), dtype=np.uint8)
    segmenter = CentreSquare()
    assert segmenter.segment(image, np.array([[5.0, 4.0]]), torch.zeros(1, 8, 12)).sum() == 9
    assert not segmenter.takes_points
    with pytest.raises(ConfigError, match=r"^CentreSquare segments from the model's point alone and cannot take "
                                          r"a user's points; give no points, or choose a segmenter") as caught:
        segmenter.segment_points(image, [[Point(5.0, 4.0)]], torch.zeros(1, 8, 12))
    assert "FloodFillSegmenter" in str(caught.value) and "\n" not in str(caught.value)
    assert not StillFrames().takes_points
    with pytest.raises(ConfigError, match="^StillFrames segments from the model's point alone"):
        StillFrames().track_points([], 0, [Point(1.0, 1.0)])


def test_which_segmenters_take_points():
    assert FloodFillSegmenter().takes_points and FloodTrackSegmenter().takes_points
    assert SAM2PointSegmenter(allow_random_weights=True).takes_points
    assert SAM2VideoSegmenter(allow_random_weights=True).takes_points
    assert not HeatmapThresholdSegmenter().takes_points
