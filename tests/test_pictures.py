"""The pictures `refam predict` writes and `refam serve` shows: the mask outlined, the heatmap over
the image with a colour bar, small images enlarged by whole pixels."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from refam.types import Prediction
from refam.visualize import MASK_COLOUR, STAR_FILL, colour_bar, display_scale, heatmap_overlay, overlay, prediction_pictures


def scene(colour, size=(96, 64)) -> tuple[Image.Image, np.ndarray]:
    """A grey picture with one object of `colour` and its mask."""
    pixels = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[16:48, 20:60] = True
    pixels[mask] = colour
    return Image.fromarray(pixels), mask


@pytest.mark.parametrize("colour", [MASK_COLOUR, (0, 200, 0), (0, 0, 0)])
def test_the_mask_is_outlined_on_any_object_colour(colour):
    """A blue tint alone vanishes on a blue object: the rim is white and black whatever the object."""
    image, mask = scene(colour)
    picture = np.asarray(overlay(image, mask, None)).astype(int)
    rim = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[1:-1, 2:]  # the mask's last row / column
    assert np.all(picture[rim] == 255)  # white on the mask's edge
    assert np.any(np.all(picture[mask] == 0, axis=-1))  # then a black line inside it
    changed = np.any(picture != np.asarray(image), axis=-1)
    assert not np.any(changed & ~mask)  # nothing drawn outside the mask


def test_small_images_are_enlarged_by_whole_pixels_large_ones_are_not():
    assert display_scale((128, 128)) == 4 and display_scale((96, 64)) == 8
    assert display_scale((1024, 768)) == 1 and display_scale((100, 3000)) == 1  # the long side stays within bounds
    image, mask = scene((200, 30, 30))
    prediction = Prediction("0", mask, (40.0, 32.0), torch.rand(4, 6))
    pictures = prediction_pictures(image, prediction)
    assert pictures["mask"].size == image.size  # the mask file is the mask, at the image's size
    assert pictures["overlay"].size == (96 * 8, 64 * 8)
    big = np.asarray(pictures["overlay"]).astype(int)
    star = np.all(big == np.array(STAR_FILL), axis=-1)
    ys, xs = np.nonzero(star)
    assert (xs.mean(), ys.mean()) == pytest.approx((40 * 8, 32 * 8), abs=3)  # the point scales with the picture
    # far from the star and the rim each 8x8 block is one original pixel
    block = big[8 * 2:8 * 3, 8 * 2:8 * 3]
    assert np.all(block == np.asarray(image)[2, 2])


def test_the_heatmap_is_drawn_over_the_image_with_a_colour_bar():
    image, _ = scene((0, 0, 0), size=(128, 128))
    heat = torch.zeros(8, 8)
    heat[0, 0] = 1.0
    picture = np.asarray(heatmap_overlay(image, heat, (100.0, 100.0))).astype(int)
    assert picture.shape[0] == 512 and picture.shape[1] > 512 + 12  # the colour bar at the right
    body = picture[:, :512]
    hot, cold = np.array(colormaps["inferno"](1.0)[:3]) * 255, np.array(colormaps["inferno"](0.0)[:3]) * 255
    grey, black = np.array([128] * 3), np.zeros(3)
    # the image shows through: a cold grey patch and a cold black patch differ, each a blend of the image and the map
    assert np.allclose(body[500, 10], 0.4 * grey + 0.6 * cold, atol=2)
    assert np.allclose(body[4 * 30, 4 * 40], 0.4 * black + 0.6 * cold, atol=2)
    assert np.allclose(body[31, 31], 0.4 * grey + 0.6 * hot, atol=6)  # the hot cell, upsampled to its place
    bar = colour_bar(512)
    strip = np.asarray(bar).astype(int)[:, bar.width // 8 + 8]  # a column through the ramp
    assert np.allclose(strip[1], hot, atol=8) and np.allclose(strip[-2], cold, atol=8)  # 1 at the top, 0 at the bottom
    assert np.array_equal(picture[:, 512:], np.asarray(bar))
