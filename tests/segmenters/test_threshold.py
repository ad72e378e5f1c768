"""HeatmapThresholdSegmenter: threshold semantics and the blob-at-the-point rule."""

import numpy as np
import pytest
import torch

from refam.segmenters import HeatmapThresholdSegmenter, Segmenter

H, W = 20, 30


def two_blobs() -> torch.Tensor:
    """Heatmap [H, W] with a left blob (rows 2-6, cols 2-8) and a right blob (rows 10-15, cols 18-26)."""
    heat = torch.zeros(H, W)
    heat[2:7, 2:9] = 0.9
    heat[10:16, 18:27] = 0.7
    return heat


def image() -> np.ndarray:
    return np.zeros((H, W, 3), dtype=np.uint8)


def test_is_a_segmenter_and_setup_is_a_no_op():
    seg = HeatmapThresholdSegmenter()
    assert isinstance(seg, Segmenter)
    seg.setup(torch.device("cpu"))
    seg.setup(torch.device("cpu"))


def test_point_in_one_blob_keeps_only_that_blob():
    heat = two_blobs()
    seg = HeatmapThresholdSegmenter(threshold=0.5)
    # Expression 0 points at the left blob, expression 1 at the right one: (x, y) order.
    points = np.array([[5.0, 4.0], [20.5, 12.5]])
    masks = seg.segment(image(), points, torch.stack([heat, heat]))
    assert masks.shape == (2, H, W) and masks.dtype == np.bool_
    left = np.zeros((H, W), bool)
    left[2:7, 2:9] = True
    right = np.zeros((H, W), bool)
    right[10:16, 18:27] = True
    np.testing.assert_array_equal(masks[0], left)
    np.testing.assert_array_equal(masks[1], right)


def test_points_are_x_then_y():
    heat = torch.zeros(H, W)
    heat[0:4, 10:15] = 1.0  # blob A: rows 0-3, cols 10-14
    heat[10:15, 0:4] = 1.0  # blob B: rows 10-14, cols 0-3 (where a swapped point would land)
    masks = HeatmapThresholdSegmenter().segment(image(), np.array([[12.0, 1.0]]), heat[None])
    assert masks[0, 1, 12] and not masks[0, 12, 1]


def test_threshold_is_inclusive_and_cuts_the_weaker_blob():
    heat = two_blobs()
    masks = HeatmapThresholdSegmenter(threshold=0.7, connected_to_point=False).segment(
        image(), np.array([[0.0, 0.0]]), heat[None]
    )
    np.testing.assert_array_equal(masks[0], (heat >= 0.7).numpy())
    assert masks[0, 12, 20], "a pixel exactly at the threshold is kept (>=)"
    masks = HeatmapThresholdSegmenter(threshold=0.8, connected_to_point=False).segment(
        image(), np.array([[0.0, 0.0]]), heat[None]
    )
    assert masks[0, 4, 4] and not masks[0, 12, 20]


def test_without_connectivity_both_blobs_are_kept():
    heat = two_blobs()
    masks = HeatmapThresholdSegmenter(threshold=0.5, connected_to_point=False).segment(
        image(), np.array([[5.0, 4.0]]), heat[None]
    )
    assert masks[0].sum() == 5 * 7 + 6 * 9


def test_diagonal_neighbours_are_one_component():
    heat = torch.zeros(H, W)
    for i in range(6):
        heat[i, i] = 1.0  # a diagonal line: one 8-connected component, six 4-connected ones
    masks = HeatmapThresholdSegmenter().segment(image(), np.array([[0.5, 0.5]]), heat[None])
    assert masks[0].sum() == 6


def test_point_below_threshold_takes_the_nearest_blob():
    heat = two_blobs()
    seg = HeatmapThresholdSegmenter(threshold=0.5)
    # (x=15, y=14) is background; the right blob (col 18) is 3 px away, the left one far.
    masks = seg.segment(image(), np.array([[15.0, 14.0]]), heat[None])
    assert masks[0].sum() == 6 * 9 and masks[0, 12, 20]


def test_nothing_above_threshold_gives_an_empty_mask():
    heat = torch.full((1, H, W), 0.2)
    masks = HeatmapThresholdSegmenter(threshold=0.5).segment(image(), np.array([[3.0, 3.0]]), heat)
    assert masks.shape == (1, H, W) and not masks.any()


def test_point_on_the_far_edge_is_clipped_into_the_image():
    heat = torch.zeros(1, H, W)
    heat[0, -3:, -3:] = 1.0
    # x == W is the right border of the last pixel: it belongs to column W - 1.
    masks = HeatmapThresholdSegmenter().segment(image(), np.array([[float(W), float(H)]]), heat)
    assert masks[0].sum() == 9


def test_no_expressions_and_bad_shapes():
    seg = HeatmapThresholdSegmenter()
    masks = seg.segment(image(), np.zeros((0, 2)), torch.zeros(0, H, W))
    assert masks.shape == (0, H, W) and masks.dtype == np.bool_
    with pytest.raises(ValueError, match="heatmaps"):
        seg.segment(image(), np.zeros((1, 2)), torch.zeros(1, H // 2, W // 2))
    with pytest.raises(ValueError, match="points"):
        seg.segment(image(), np.zeros((2, 1)), torch.zeros(2, H, W))
    with pytest.raises(ValueError, match="threshold"):
        HeatmapThresholdSegmenter(threshold=1.5)
