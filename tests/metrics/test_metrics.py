"""mIoU, oIoU and PA on hand-computed cases (conventions: notes/reference-algorithms.md §3.3)."""

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from refam.metrics import MeanIoU, OverallIoU, PointAccuracy, intersection_union
from refam.metrics.iou import iou


def masks(shape, *cells):
    m = torch.zeros(shape, dtype=torch.bool)
    for r, c in cells:
        m[r, c] = True
    return m


# Expression A: pred and gt are 4-pixel squares overlapping in 2 pixels -> I=2, U=6, IoU=1/3.
A_PRED = masks((4, 5), (0, 0), (0, 1), (1, 0), (1, 1))
A_GT = masks((4, 5), (0, 1), (0, 2), (1, 1), (1, 2))
# Expression B: a 1-pixel object found exactly -> I=1, U=1, IoU=1.
B_PRED = B_GT = masks((3, 3), (2, 2))
EMPTY = torch.zeros((3, 3), dtype=torch.bool)


def test_intersection_union_counts_pixels():
    assert intersection_union(A_PRED, A_GT) == (2, 6)
    assert intersection_union(A_PRED.numpy(), A_GT.numpy()) == (2, 6)  # numpy masks from datasets work too
    assert intersection_union(EMPTY, EMPTY) == (0, 0)


def test_iou_of_one_pair_is_what_miou_averages():
    assert iou(A_PRED, A_GT) == pytest.approx(1 / 3)
    assert iou(B_PRED.numpy(), B_GT.numpy()) == 1.0
    assert iou(EMPTY, EMPTY) == 0.0  # both empty: 0, as mIoU counts it
    assert iou(counts=(2, 6)) == pytest.approx(1 / 3) and iou(counts=(0, 0)) == 0.0  # from stored counts


def test_miou_and_oiou_differ_as_hand_computed():
    miou, oiou = MeanIoU(), OverallIoU()
    for pred, gt in ((A_PRED, A_GT), (B_PRED, B_GT)):
        miou.update(pred, gt)
        oiou.update(pred, gt)
    assert miou.compute().item() == pytest.approx((1 / 3 + 1) / 2 * 100)  # 66.67: each expression weighs the same
    assert oiou.compute().item() == pytest.approx(3 / 7 * 100)  # 42.86: pixels weigh the same


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")  # on purpose here
def test_empty_union_scores_zero_in_miou_and_nothing_in_oiou():
    miou, oiou = MeanIoU(), OverallIoU()
    for pred, gt in ((B_PRED, B_GT), (EMPTY, EMPTY)):
        miou.update(pred, gt)
        oiou.update(pred, gt)
    assert miou.compute().item() == pytest.approx(50.0)  # the empty pair counts, with IoU 0
    assert oiou.compute().item() == pytest.approx(100.0)  # it adds 0 to ΣI and ΣU
    only_empty = OverallIoU()
    only_empty.update(EMPTY, EMPTY)
    assert only_empty.compute().item() == 0.0
    for metric in (MeanIoU(), OverallIoU(), PointAccuracy()):
        assert metric.compute().item() == 0.0  # nothing scored reads 0, not NaN


def test_shape_mismatch_and_non_bool_are_refused():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        MeanIoU().update(A_PRED, A_GT.T.contiguous())
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        OverallIoU().update(A_PRED, A_GT.T.contiguous())
    with pytest.raises(TypeError, match="bool"):
        MeanIoU().update(A_PRED.float(), A_GT)


def test_point_accuracy_on_pixel_boundaries():
    target = masks((4, 6), (2, 3))  # only the pixel covering x in [3, 4), y in [2, 3)
    cases = {
        (3.0, 2.0): True, (3.999, 2.999): True, (3.5, 2.5): True,
        (4.0, 2.5): False, (2.999, 2.5): False, (3.5, 3.0): False, (3.5, 1.999): False,
    }
    for point, expected in cases.items():
        pa = PointAccuracy()
        pa.update(point, target)
        assert pa.compute().item() == (100.0 if expected else 0.0), point


def test_point_accuracy_clamps_into_the_image_and_accepts_tensors():
    corners = masks((4, 6), (3, 5), (0, 0))
    pa = PointAccuracy()
    pa.update((6.0, 4.0), corners)  # the right/bottom edge names the last pixel
    pa.update(torch.tensor([-0.5, -3.0]), corners)  # clamped to (0, 0)
    pa.update(torch.tensor([2.0, 1.0]), corners)  # miss
    assert pa.compute().item() == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="finite"):
        pa.update((float("nan"), 1.0), corners)


def pairs():
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(9):
        pred = torch.rand((7, 9), generator=gen) > 0.6
        gt = torch.rand((7, 9), generator=gen) > 0.5
        point = torch.rand(2, generator=gen) * torch.tensor([9.0, 7.0])
        out.append((pred, gt, point))
    out.append((EMPTY, EMPTY, torch.tensor([1.0, 1.0])))
    return out


def feed(metric, items):
    for pred, gt, point in items:
        metric.update(point, gt) if isinstance(metric, PointAccuracy) else metric.update(pred, gt)
    return metric


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")  # on purpose here
@pytest.mark.parametrize("cls", [MeanIoU, OverallIoU, PointAccuracy])
def test_summed_states_of_two_shards_equal_one_metric_over_all(cls):
    items = pairs()
    whole = feed(cls(), items)
    left, right = feed(cls(), items[0::2]), feed(cls(), items[1::2])
    # What DDP sync does: every state is summed across ranks.
    assert all(fx is dim_zero_sum for fx in whole._reductions.values())
    summed = cls()
    for name in whole._defaults:
        setattr(summed, name, getattr(left, name) + getattr(right, name))
    assert summed.compute().item() == pytest.approx(whole.compute().item(), abs=1e-9)
    left.merge_state(right)
    assert left.compute().item() == pytest.approx(whole.compute().item(), abs=1e-9)
    assert 0.0 < whole.compute().item() < 100.0  # a non-trivial case


def test_miou_matches_a_direct_numpy_computation():
    items = pairs()
    ious = []
    for pred, gt, _ in items:
        p, g = pred.numpy(), gt.numpy()
        union = np.logical_or(p, g).sum()
        ious.append(np.logical_and(p, g).sum() / union if union else 0.0)
    assert feed(MeanIoU(), items).compute().item() == pytest.approx(np.mean(ious) * 100)
