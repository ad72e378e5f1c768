from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
import pytest
import torch

from refam.errors import ConfigError
from refam.segmenters.floodfill import FloodFillSegmenter
from refam.shapes.scenes import make_scene
from refam.types import Point


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


# -- a user's points (segment_points): the union of the positive points' regions minus the negative ones'

DEMO = Path(__file__).resolve().parents[2] / "assets" / "shapes-demo"
CIRCLE, SQUARE = (96.5, 22.5), (36.5, 27.5)  # (x, y) inside demo-00000's red circle and purple square


@pytest.fixture(scope="module")
def demo():
    """demo-00000 (a red circle, a purple square, ...) and the ground-truth masks of the circle and the square."""
    image = np.asarray(Image.open(DEMO / "images" / "demo-00000.png").convert("RGB"))
    masks = [np.asarray(Image.open(DEMO / "masks" / f"demo-00000-{k}.png")) > 0 for k in (0, 4)]
    return image, masks


def corrected(image, *prompts):
    return FloodFillSegmenter().segment_points(image, [list(p) for p in prompts], torch.zeros(len(prompts), *image.shape[:2]))


def test_positive_points_add_their_regions_and_negative_points_remove_theirs(demo):
    image, (circle, square) = demo
    both, circle_only, square_only, nothing = corrected(
        image,
        [Point(*CIRCLE, 1), Point(*SQUARE, 1)],
        [Point(*CIRCLE, 1), Point(*SQUARE, 1), Point(*SQUARE, 0)],  # "not the square"
        [Point(*CIRCLE, 0), Point(*SQUARE, 1)],  # a negative on a region no positive took: nothing to remove
        [Point(*CIRCLE, 0)],  # no positive point: nothing is pointed at
    )
    np.testing.assert_array_equal(both, circle | square)
    np.testing.assert_array_equal(circle_only, circle)
    np.testing.assert_array_equal(square_only, square)
    assert not nothing.any()


def test_one_positive_point_is_the_point_prompt(demo):
    image, _ = demo
    points = np.array([CIRCLE, SQUARE, (5.5, 120.5)])  # (x, y); the last lands on the background
    np.testing.assert_array_equal(corrected(image, *[[Point(x, y, 1)] for x, y in points]),
                                  FloodFillSegmenter().segment(image, points, torch.zeros(3, *image.shape[:2])))


def test_bad_prompts_are_rejected(demo):
    image, _ = demo
    with pytest.raises(ValueError, match="labels"):
        corrected(image, [Point(*CIRCLE, 2)])
    with pytest.raises(ValueError, match="finite"):
        corrected(image, [Point(float("nan"), 3.0, 1)])
    with pytest.raises(ValueError, match="heatmaps"):
        FloodFillSegmenter().segment_points(image, [[Point(*CIRCLE)]], torch.zeros(2, *image.shape[:2]))
