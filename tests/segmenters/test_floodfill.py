import numpy as np
from scipy import ndimage
import pytest
import torch

from refam.errors import ConfigError
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.shapes.scenes import make_scene


def test_point_inside_an_object_gives_its_visible_mask():
    scene = make_scene("test", 1)
    image = np.asarray(scene.image)
    points, targets = [], []
    for o in scene.objects:
        ys, xs = np.nonzero(o.mask)
        middle = len(xs) // 2
        points.append([xs[middle] + 0.5, ys[middle] + 0.5])
        targets.append(o.mask)
    masks = FloodFillSegmenter().segment(image, np.array(points), torch.zeros(len(points), *image.shape[:2]))
    for mask, target, (x, y) in zip(masks, targets, points):
        # an occluder may cut an object in two: a point prompt gets the part it lands in
        parts, _ = ndimage.label(target, structure=np.ones((3, 3)))
        expected = parts == parts[int(y), int(x)]
        assert np.array_equal(mask, expected)


def test_point_on_background_gives_background():
    image = np.full((20, 30, 3), 200, dtype=np.uint8)
    image[5:10, 5:10] = (255, 0, 0)
    masks = FloodFillSegmenter().segment(image, np.array([[25.0, 15.0], [7.5, 7.5]]), torch.zeros(2, 20, 30))
    assert masks[0].sum() == 20 * 30 - 25 and not masks[0][5:10, 5:10].any()
    assert masks[1].sum() == 25 and masks[1][5:10, 5:10].all()


def test_tolerance_is_checked():
    with pytest.raises(ConfigError, match="tolerance"):
        FloodFillSegmenter(tolerance=300)
