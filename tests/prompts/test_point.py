"""The point that prompts the segmenter, in image pixels, and the video frame it goes on."""

import pytest
import torch

from refam.prompts.keyframe import frames_of_latent, key_frames
from refam.prompts.point import argmax_points, upsample


@pytest.mark.parametrize("height,width", [(100, 200), (75, 50), (64, 64)])
def test_planted_cell_maps_to_the_right_image_pixel(height, width):
    rows, cols = 4, 8
    for r, c in [(0, 0), (1, 6), (3, 7)]:
        grid = torch.zeros(1, rows, cols)
        grid[0, r, c] = 1.0
        x, y = argmax_points(grid, height, width)[0].tolist()
        assert (x, y) == pytest.approx(((c + 0.5) * width / cols, (r + 0.5) * height / rows))
        # the upsampled map the segmenter sees peaks there too (to within the half pixel by which an
        # even-sized cell's centre misses a pixel centre: 0.5 / cell size per axis)
        image_map = upsample(grid, height, width)[0]
        tolerance = 1.0 / min(height / rows, width / cols)
        assert image_map[int(y), int(x)] >= image_map.max() - tolerance


def test_points_are_x_then_y():
    grid = torch.zeros(1, 10, 30)
    grid[0, 2, 25] = 1.0
    assert argmax_points(grid, 10, 30)[0].tolist() == [25.5, 2.5]
    assert argmax_points(grid, 20, 300)[0].tolist() == [255.0, 5.0]


def test_key_frames_first_and_confident():
    heat = torch.zeros(2, 3, 2, 2)
    heat[0, 2, 1, 1] = 1.0
    heat[1, 0, 0, 0] = 1.0
    mapping = [0, 1, 1, 1, 2, 2, 2]
    assert frames_of_latent(mapping, 2) == [4, 5, 6]
    assert key_frames(heat, mapping, "first") == [0, 0]
    assert key_frames(heat, mapping, "confident") == [5, 0]  # the middle frame of latent 2's frames
    with pytest.raises(ValueError, match="key frame"):
        key_frames(heat, mapping, "best")
