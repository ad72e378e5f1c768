"""J, F and J&F: hand-computed cases, and agreement with a verbatim copy of the official DAVIS 2017 code."""

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torchmetrics.utilities.data import dim_zero_sum

from refam.metrics import JandF, TrackScores, contour_accuracy, region_similarity
from refam.metrics.jf import boundary_map, bound_pixels, statistics

# ---------------------------------------------------------------------------------------------------
# Verbatim transcription of github.com/davisvideochallenge/davis2017-evaluation, commit
# 30b698a691681588bbcfe0f2a7c7c680d49bb72d, davis2017/metrics.py (db_eval_iou, db_eval_boundary,
# f_measure, _seg2bmap; docstrings dropped) and davis2017/utils.py (db_statistics, read from the fork
# engomarwasfy/davis2017-evaluation@ec4f0963, identical to upstream). The only edit: `np.bool`,
# removed in NumPy 1.24, is written `bool` (the same dtype).
# It is compiled from this string, not written as test code, because pytest's assertion rewriting
# evaluates every operand of a chained comparison: _seg2bmap's guard
# `assert not (width > w | height > h | abs(ar1 - ar2) > 0.01)` relies on short-circuiting after
# `width > (w | height)` is False, and would raise TypeError (int | float) once rewritten.
# ---------------------------------------------------------------------------------------------------
OFFICIAL_SOURCE = r'''
import math
import warnings

import cv2
import numpy as np


def db_eval_iou(annotation, segmentation, void_pixels=None):
    assert annotation.shape == segmentation.shape, \
        f'Annotation({annotation.shape}) and segmentation:{segmentation.shape} dimensions do not match.'
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)

    if void_pixels is not None:
        assert annotation.shape == void_pixels.shape, \
            f'Annotation({annotation.shape}) and void pixels:{void_pixels.shape} dimensions do not match.'
        void_pixels = void_pixels.astype(bool)
    else:
        void_pixels = np.zeros_like(segmentation)

    # Intersection between all sets
    inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))

    j = inters / union
    if j.ndim == 0:
        j = 1 if np.isclose(union, 0) else j
    else:
        j[np.isclose(union, 0)] = 1
    return j


def db_eval_boundary(annotation, segmentation, void_pixels=None, bound_th=0.008):
    assert annotation.shape == segmentation.shape
    if void_pixels is not None:
        assert annotation.shape == void_pixels.shape
    if annotation.ndim == 3:
        n_frames = annotation.shape[0]
        f_res = np.zeros(n_frames)
        for frame_id in range(n_frames):
            void_pixels_frame = None if void_pixels is None else void_pixels[frame_id, :, :, ]
            f_res[frame_id] = f_measure(segmentation[frame_id, :, :, ], annotation[frame_id, :, :], void_pixels_frame, bound_th=bound_th)
    elif annotation.ndim == 2:
        f_res = f_measure(segmentation, annotation, void_pixels, bound_th=bound_th)
    else:
        raise ValueError(f'db_eval_boundary does not support tensors with {annotation.ndim} dimensions')
    return f_res


def f_measure(foreground_mask, gt_mask, void_pixels=None, bound_th=0.008):
    assert np.atleast_3d(foreground_mask).shape[2] == 1
    if void_pixels is not None:
        void_pixels = void_pixels.astype(bool)
    else:
        void_pixels = np.zeros_like(foreground_mask).astype(bool)

    bound_pix = bound_th if bound_th >= 1 else \
        np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))

    # Get the pixel boundaries of both masks
    fg_boundary = _seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = _seg2bmap(gt_mask * np.logical_not(void_pixels))

    from skimage.morphology import disk

    # fg_dil = binary_dilation(fg_boundary, disk(bound_pix))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
    # gt_dil = binary_dilation(gt_boundary, disk(bound_pix))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))

    # Get the intersection
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil

    # Area of the intersection
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)

    # % Compute precision and recall
    if n_fg == 0 and n_gt > 0:
        precision = 1
        recall = 0
    elif n_fg > 0 and n_gt == 0:
        precision = 0
        recall = 1
    elif n_fg == 0 and n_gt == 0:
        precision = 1
        recall = 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)

    # Compute F measure
    if precision + recall == 0:
        F = 0
    else:
        F = 2 * precision * recall / (precision + recall)

    return F


def _seg2bmap(seg, width=None, height=None):
    seg = seg.astype(bool)
    seg[seg > 0] = 1

    assert np.atleast_3d(seg).shape[2] == 1

    width = seg.shape[1] if width is None else width
    height = seg.shape[0] if height is None else height

    h, w = seg.shape[:2]

    ar1 = float(width) / float(height)
    ar2 = float(w) / float(h)

    assert not (
        width > w | height > h | abs(ar1 - ar2) > 0.01
    ), "Can" "t convert %dx%d seg to %dx%d bmap." % (w, h, width, height)

    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)

    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]

    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0

    if w == width and h == height:
        bmap = b
    else:
        bmap = np.zeros((height, width))
        for x in range(w):
            for y in range(h):
                if b[y, x]:
                    j = 1 + math.floor((y - 1) + height / h)
                    i = 1 + math.floor((x - 1) + width / h)
                    bmap[j, i] = 1

    return bmap


def db_statistics(per_frame_values):
    # strip off nan values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        M = np.nanmean(per_frame_values)
        O = np.nanmean(per_frame_values > 0.5)  # noqa: E741

    N_bins = 4
    ids = np.round(np.linspace(1, len(per_frame_values), N_bins + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)

    D_bins = [per_frame_values[ids[i]:ids[i + 1] + 1] for i in range(4)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        D = np.nanmean(D_bins[0]) - np.nanmean(D_bins[3])

    return M, O, D
'''
_official: dict = {}
exec(compile(OFFICIAL_SOURCE, "davis2017-evaluation (transcribed)", "exec"), _official)
db_eval_iou, db_eval_boundary, db_statistics = (_official[n] for n in ("db_eval_iou", "db_eval_boundary", "db_statistics"))

# --------------------------------------------- end of the transcription ----------------------------


def box(shape, rows, cols):
    """A bool mask with rows[0]..rows[1] × cols[0]..cols[1] (inclusive) set."""
    m = np.zeros(shape, dtype=bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


SHAPE = (10, 12)  # diagonal 15.6 -> bound_pix = ceil(0.008 * 15.6) = 1: the tolerance disk is the 3x3 cross
SQUARE = box(SHAPE, (2, 5), (2, 5))
EMPTY = np.zeros(SHAPE, dtype=bool)


def test_identical_masks_score_one():
    assert region_similarity(SQUARE, SQUARE) == 1.0
    assert contour_accuracy(SQUARE, SQUARE) == 1.0


def test_disjoint_masks_score_zero():
    far = box(SHAPE, (2, 5), (8, 10))  # 3 columns apart: beyond the 1-pixel tolerance
    assert region_similarity(far, SQUARE) == 0.0
    assert contour_accuracy(far, SQUARE) == 0.0  # precision = recall = 0: the F = 0 branch


def test_boundary_is_the_square_ring_offset_towards_the_origin():
    # _seg2bmap marks pixels that differ from their right, lower or lower-right neighbour: for the
    # square rows 2..5 × cols 2..5 that is the 16-pixel ring of the box rows 1..5 × cols 1..5.
    ring = box(SHAPE, (1, 5), (1, 5)) & ~box(SHAPE, (2, 4), (2, 4))
    assert np.array_equal(boundary_map(SQUARE), ring)
    assert bound_pixels(SHAPE) == 1.0


def test_one_pixel_shift_is_within_tolerance_two_pixels_is_not():
    # One column right: overlap 4x3 = 12 of a 20-pixel union. Every boundary pixel of either ring is
    # on, or 4-adjacent to, the other ring, so precision = recall = 1.
    shifted = box(SHAPE, (2, 5), (3, 6))
    assert region_similarity(shifted, SQUARE) == pytest.approx(12 / 20)
    assert contour_accuracy(shifted, SQUARE) == 1.0
    # Two columns right: the predicted ring is rows 1..5 × cols 3..7. Of its 16 pixels, within one
    # 4-step of the true ring (rows 1..5 × cols 1..5): top row cols 3..6 (4), bottom row cols 3..6
    # (4), left column rows 2 and 4 (next to the top/bottom rows; row 3 is 2 away) (2), right column
    # col 7 none (2 away) -> precision 10/16; by mirror symmetry recall 10/16, so F = 10/16.
    shifted2 = box(SHAPE, (2, 5), (4, 7))
    assert region_similarity(shifted2, SQUARE) == pytest.approx(8 / 24)
    assert contour_accuracy(shifted2, SQUARE) == pytest.approx(10 / 16)
    # bound_th >= 1 is a tolerance in pixels: disk(2) reaches the 2-away pixels
    assert contour_accuracy(shifted2, SQUARE, bound_th=2) == 1.0


def test_empty_prediction_of_a_present_object():
    assert region_similarity(EMPTY, SQUARE) == 0.0
    assert contour_accuracy(EMPTY, SQUARE) == 0.0  # precision 1, recall 0
    assert region_similarity(SQUARE, EMPTY) == 0.0
    assert contour_accuracy(SQUARE, EMPTY) == 0.0  # precision 0, recall 1


def test_empty_prediction_of_an_absent_object_is_perfect():
    assert region_similarity(EMPTY, EMPTY) == 1.0  # empty union counts as 1, not 0/0
    assert contour_accuracy(EMPTY, EMPTY) == 1.0  # both boundaries empty


def test_a_full_frame_mask_has_no_boundary():
    # _seg2bmap draws no boundary along the bottom/right image edges, so a mask covering the whole
    # frame has none at all and F compares two empty boundaries: 1, even against an empty prediction.
    full = np.ones(SHAPE, dtype=bool)
    assert not boundary_map(full).any()
    assert contour_accuracy(EMPTY, full) == 1.0
    assert region_similarity(EMPTY, full) == 0.0


def test_void_pixels_are_ignored():
    void = box(SHAPE, (7, 9), (0, 11))  # the bottom three rows
    spill = SQUARE | box(SHAPE, (8, 9), (2, 5))  # extra prediction only inside the void band
    assert region_similarity(spill, SQUARE) < 1.0
    assert region_similarity(spill, SQUARE, void) == 1.0
    assert contour_accuracy(spill, SQUARE) < 1.0
    assert contour_accuracy(spill, SQUARE, void) == 1.0
    everything = np.ones(SHAPE, dtype=bool)
    assert region_similarity(SQUARE, EMPTY, everything) == 1.0  # nothing left to score


def test_inputs_are_checked():
    with pytest.raises(TypeError, match="bool"):
        region_similarity(SQUARE.astype(np.uint8) * 255, SQUARE)
    with pytest.raises(ValueError, match=r"\(10, 12\).*\(12, 10\)"):
        contour_accuracy(SQUARE, SQUARE.T.copy())
    assert region_similarity(torch.from_numpy(SQUARE), torch.from_numpy(SQUARE)) == 1.0  # tensors work


def blobs(rng, shape, n):
    """n random smooth blobs (thresholded low-pass noise) of the given size, some touching the edges."""
    # large frames: smooth at 1/8 resolution and upsample (a wide Gaussian at 480p is slow)
    low = tuple(s // 8 for s in shape) if min(shape) >= 64 else shape
    out = []
    for _ in range(n):
        field = gaussian_filter(rng.standard_normal(low), max(low) / 12)
        field = cv2.resize(field, shape[::-1], interpolation=cv2.INTER_LINEAR)
        out.append(field > rng.uniform(0.0, 0.5) * field.std())
    return out


# bound_pix 1, 2, 3, 4 and 8 (the DAVIS 480p frame)
SIZES = [(9, 13), (96, 128), (180, 240), (240, 427), (480, 854)]


@pytest.mark.parametrize("shape", SIZES)
def test_frame_scores_equal_the_official_on_random_blobs(shape):
    rng = np.random.default_rng(sum(shape))
    masks = blobs(rng, shape, 8)
    void = blobs(rng, shape, 1)[0] & (rng.random(shape) < 0.3)
    cases = [(masks[i], masks[i + 1]) for i in range(0, 8, 2)] + [(masks[0], masks[0]), (masks[2], ~masks[2])]
    worst = 0.0
    for pred, gt in cases:
        for v in (None, void):
            ours = (region_similarity(pred, gt, v), contour_accuracy(pred, gt, v))
            official = (float(db_eval_iou(gt, pred, v)), float(db_eval_boundary(gt, pred, v)))
            assert ours == pytest.approx(official, abs=1e-6)
            worst = max(worst, *(abs(a - b) for a, b in zip(ours, official)))
    assert worst == 0.0  # same arithmetic in the same order: bit-identical
    # the cases are not degenerate: scores spread between 0 and 1
    scores = [contour_accuracy(p, g) for p, g in cases[:4]]
    assert 0.0 < min(scores) < 1.0


def test_statistics_equal_db_statistics():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 4, 5, 7, 50, 104, 255):
        values = rng.random(n)
        assert statistics(values) == pytest.approx(db_statistics(values), abs=1e-12), n
    # From 256 frames on, the official's uint8 bin edges wrap (255 + 1 == 0): its decay turns NaN or
    # meaningless; mean and recall still agree.
    values = rng.random(256)
    with np.errstate(over="ignore"):
        official = db_statistics(values)
    assert np.isnan(official[2]) and np.isfinite(statistics(values)[2])
    assert statistics(values)[:2] == pytest.approx(official[:2], abs=1e-12)


def test_track_equals_the_official_per_object_pipeline():
    # evaluation.py: db_eval_iou / db_eval_boundary over an object's [T, H, W] masks, then db_statistics.
    rng = np.random.default_rng(7)
    preds, gts = np.stack(blobs(rng, (60, 80), 9)), np.stack(blobs(rng, (60, 80), 9))
    metric = JandF()
    metric.update(torch.from_numpy(preds), torch.from_numpy(gts))
    jm, jr, jd = db_statistics(db_eval_iou(gts, preds))
    fm, fr, fd = db_statistics(db_eval_boundary(gts, preds))
    got = metric.compute()
    expected = {"J-Mean": jm, "J-Recall": jr, "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd,
                "J&F-Mean": (jm + fm) / 2}
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value * 100, abs=1e-9), name


def test_frames_are_averaged_within_a_track_then_tracks_are_averaged():
    # Track A: a hit and a miss (J = 1, 0: mean 0.5). Track B: one hit (J = 1).
    # The official: mean over objects of per-object means = (0.5 + 1) / 2 = 0.75, not 2/3 (frames pooled).
    metric = JandF()
    metric.update([SQUARE, EMPTY], [SQUARE, SQUARE])
    metric.update([SQUARE], [SQUARE])
    out = metric.compute()
    assert out["J-Mean"].item() == pytest.approx(75.0)
    assert out["F-Mean"].item() == pytest.approx(75.0)
    assert out["J&F-Mean"].item() == pytest.approx(75.0)
    assert out["J-Recall"].item() == pytest.approx(75.0)  # A: 1 of 2 frames > 0.5; B: 1 of 1
    assert out["tracks"].item() == 2


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")  # the refused compute
def test_frame_by_frame_tracks_equal_whole_tracks():
    rng = np.random.default_rng(3)
    tracks = [(blobs(rng, (40, 50), n), blobs(rng, (40, 50), n)) for n in (3, 6, 1)]
    whole, streamed = JandF(), JandF()
    for preds, gts in tracks:
        whole.update(iter(preds), (g for g in gts))  # generators: one frame in memory at a time
    for t in range(6):  # interleaved frames of tracks that end at different times
        for k, (preds, gts) in enumerate(tracks):
            if t < len(preds):
                streamed.update_frame(k, preds[t], gts[t])
    with pytest.raises(RuntimeError, match="still open"):
        streamed.compute()
    for k in range(3):
        streamed.end_track(k)
    for name, value in whole.compute().items():
        assert streamed.compute()[name].item() == pytest.approx(value.item(), abs=1e-12), name
    with pytest.raises(KeyError, match="no open track"):
        streamed.end_track(0)


def test_precomputed_track_scores_and_empty_tracks():
    metric = JandF()
    metric.update(TrackScores(j=[1.0, 0.0], f=[0.5, 0.5]))
    assert metric.compute()["J&F-Mean"].item() == pytest.approx(50.0)
    with pytest.raises(ValueError, match="at least one frame"):
        metric.update([], [])
    with pytest.raises(ValueError):
        metric.update([SQUARE, SQUARE], [SQUARE])  # frame counts differ


@pytest.mark.filterwarnings("ignore:The ``compute`` method.*before the ``update``")
def test_summed_states_of_two_processes_equal_one_process():
    rng = np.random.default_rng(5)
    tracks = [(blobs(rng, (30, 40), n), blobs(rng, (30, 40), n)) for n in (2, 5, 3, 4, 1)]
    whole, left, right = JandF(), JandF(), JandF()
    for k, (preds, gts) in enumerate(tracks):
        whole.update(preds, gts)
        (left if k % 2 else right).update(preds, gts)  # one video per process, never split
    assert all(fx is dim_zero_sum for fx in whole._reductions.values())
    summed = JandF()
    for name in whole._defaults:  # what DDP sync does: every state summed across ranks
        setattr(summed, name, getattr(left, name) + getattr(right, name))
    left.merge_state(right)
    for name, value in whole.compute().items():
        assert summed.compute()[name].item() == pytest.approx(value.item(), abs=1e-9), name
        assert left.compute()[name].item() == pytest.approx(value.item(), abs=1e-9), name
    assert 0.0 < whole.compute()["J&F-Mean"].item() < 100.0
    assert JandF().compute()["J&F-Mean"].item() == 0.0  # nothing scored reads 0, not NaN
