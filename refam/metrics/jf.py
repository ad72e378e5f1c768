"""J (region similarity), F (contour accuracy) and J&F, equal to the official DAVIS 2017 evaluation.

Transcribed from github.com/davisvideochallenge/davis2017-evaluation at commit
30b698a691681588bbcfe0f2a7c7c680d49bb72d:

- `davis2017/metrics.py`: `db_eval_iou` (J), `f_measure` and `_seg2bmap` (F, `bound_th=0.008`).
- `davis2017/utils.py` (`db_statistics`): per object, the mean of its per-frame values, the recall
  (fraction of frames scoring > 0.5) and the decay (mean of the first quarter of the frames minus the
  mean of the last quarter).
- `davis2017/evaluation.py` and `evaluation_method.py`: J-Mean is the mean over every object of every
  sequence of that object's mean over frames (frames first, then objects, all sequences pooled);
  J&F-Mean = (J-Mean + F-Mean) / 2.

MeViS (henghuiding/MeViS `tools/eval_mevis.py`) scores an expression with the same per-frame
`db_eval_iou` / `db_eval_boundary` over all its frames, averages over the frames, then over
expressions: the same two-level mean with one track per expression.

A *track* here is what the official calls an object (or MeViS an expression): one sequence of
(prediction, ground truth) frame pairs. Which frames belong to a track (DAVIS semi-supervised drops
the first and last) is the caller's choice; `refam.evaluation.score` makes it for DAVIS-layout folders.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from skimage.morphology import disk
from torch import Tensor
from torchmetrics import Metric

Mask = np.ndarray | Tensor

# Column names of the official global results table (evaluation_method.py), in its order.
STATISTICS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


def _as_bool_array(mask: Mask, what: str) -> np.ndarray:
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    # The official casts anything to bool; a float or 0/255 mask arriving here means a threshold was
    # forgotten upstream, so refuse it (as refam.metrics.iou does) instead of silently scoring it.
    if mask.dtype != np.bool_:
        raise TypeError(f"{what} must be a bool mask, got dtype {mask.dtype}; threshold it first (e.g. mask > 0.5)")
    if mask.ndim != 2:
        raise ValueError(f"{what} must be one frame [H, W], got shape {tuple(mask.shape)}")
    return mask


def _frame(pred: Mask, gt: Mask, void: Mask | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    pred, gt = _as_bool_array(pred, "pred"), _as_bool_array(gt, "gt")
    void = None if void is None else _as_bool_array(void, "void")
    for name, other in (("gt", gt), ("void", void)):
        if other is not None and other.shape != pred.shape:
            raise ValueError(
                f"pred and {name} must have the same shape, got pred {tuple(pred.shape)} and {name} "
                f"{tuple(other.shape)}; predict at the annotation's resolution"
            )
    return pred, gt, void


def region_similarity(pred: Mask, gt: Mask, void: Mask | None = None) -> float:
    """J of one frame: |pred ∧ gt| / |pred ∨ gt| over the non-void pixels; 1 when that union is empty.

    `db_eval_iou`: an empty prediction of an empty (or all-void) object is a perfect 1, not 0/0.
    """
    pred, gt, void = _frame(pred, gt, void)
    inter, union = pred & gt, pred | gt
    if void is not None:
        inter, union = inter & ~void, union & ~void
    n_union = np.count_nonzero(union)
    return 1.0 if n_union == 0 else np.count_nonzero(inter) / n_union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """`_seg2bmap` at the mask's own size: 1-pixel boundaries, offset half a pixel towards the origin.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; the
    last row compares with the right neighbour only, the last column with the lower one only, and
    the bottom-right pixel never is (so a mask touching the bottom/right image edge has no boundary
    drawn along that edge, as in the official).
    """
    seg = np.asarray(mask, dtype=bool)
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def bound_pixels(shape: tuple[int, ...], bound_th: float = 0.008) -> float:
    """The match tolerance in pixels: `bound_th` itself when >= 1, else ceil(bound_th × image diagonal)."""
    return bound_th if bound_th >= 1 else float(np.ceil(bound_th * np.linalg.norm(shape)))


@functools.lru_cache(maxsize=16)
def _disk(radius: float) -> np.ndarray:
    # the official builds skimage's disk(bound_pix) and dilates with cv2; the kernel is read-only here
    kernel = disk(radius).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


@dataclass(frozen=True)
class Contour:
    """A mask's boundary and that boundary dilated by the tolerance disk (reusable across pairs)."""

    boundary: np.ndarray  # bool [H, W]
    dilated: np.ndarray  # bool [H, W]

    @classmethod
    def of(cls, mask: np.ndarray, bound_pix: float) -> Contour:
        b = boundary_map(mask)
        return cls(b, cv2.dilate(b.astype(np.uint8), _disk(bound_pix)).astype(bool))


def boundary_f(pred: Contour, gt: Contour) -> float:
    """F from two contours: `f_measure`'s precision/recall cases and harmonic mean, verbatim."""
    n_fg, n_gt = np.count_nonzero(pred.boundary), np.count_nonzero(gt.boundary)
    if n_fg == 0 and n_gt > 0:  # nothing predicted: nothing wrong (precision 1) but nothing found
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(pred.boundary & gt.dilated) / float(n_fg)
        recall = np.count_nonzero(gt.boundary & pred.dilated) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def contour_accuracy(pred: Mask, gt: Mask, void: Mask | None = None, bound_th: float = 0.008) -> float:
    """F of one frame (`f_measure`): boundary precision/recall within a disk of `bound_pixels` pixels.

    Void pixels are removed from both masks before their boundaries are drawn. Both boundaries empty
    gives 1; exactly one empty gives 0 (its precision or recall is 0 while the other is 1).
    """
    pred, gt, void = _frame(pred, gt, void)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    bound_pix = bound_pixels(pred.shape, bound_th)
    return boundary_f(Contour.of(pred, bound_pix), Contour.of(gt, bound_pix))


def statistics(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of one track's per-frame values, as `db_statistics`.

    Recall is the fraction of frames strictly above 0.5. Decay splits the frames into 4 bins at
    round(linspace(1, n, 5)) - 1 (consecutive bins share their edge frame) and subtracts the last
    bin's mean from the first's. The official casts the bin edges to uint8, so from 256 frames on
    `edge + 1` wraps to 0 and its decay is NaN or garbage; plain integers are used here, so results
    agree up to 255 frames (every DAVIS 2017 sequence) and stay meaningful beyond.
    """
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("a track needs at least one frame to be scored")
    mean, recall = float(np.nanmean(v)), float(np.nanmean(v > 0.5))
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i]:ids[i + 1] + 1] for i in range(4)]
    return mean, recall, float(np.nanmean(bins[0]) - np.nanmean(bins[3]))


@dataclass
class TrackScores:
    """The per-frame J and F of one track, in frame order; floats only, so a video is never held."""

    j: list[float] = field(default_factory=list)
    f: list[float] = field(default_factory=list)

    def add_frame(self, pred: Mask, gt: Mask, void: Mask | None = None, bound_th: float = 0.008) -> None:
        self.add_values(region_similarity(pred, gt, void), contour_accuracy(pred, gt, void, bound_th))

    def add_values(self, j: float, f: float) -> None:
        self.j.append(float(j))
        self.f.append(float(f))

    def __len__(self) -> int:
        return len(self.j)

    def summary(self) -> dict[str, float]:
        """This track's J/F mean, recall and decay (fractions in [0, 1]), keyed as in `STATISTICS`."""
        return dict(zip(STATISTICS, statistics(self.j) + statistics(self.f)))


class JandF(Metric):
    """J&F-Mean, J-Mean/Recall/Decay and F-Mean/Recall/Decay over tracks, ×100 as papers print them.

    Each track's statistics come from its own frames; the result is their mean over tracks, so a
    long video weighs no more than a short one (the official order: frames within an object, then
    objects). States are per-track sums and a track count, summed across processes; a track must be
    scored whole by one process (one video per process), which makes the multi-GPU result equal the
    single-process one.

    Feed it either
    - `update(preds, targets[, voids])` with one track's masks in frame order (iterables of [H, W]
      bool masks, e.g. a [T, H, W] tensor or a generator that reads frames one at a time),
    - `update(track_scores)` with a finished `TrackScores` (per-frame values computed elsewhere), or
    - `update_frame(track_id, pred, target)` frame by frame, then `end_track(track_id)`.
    Open tracks are not states: end them before `compute()`, and use `update`, not `forward`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, bound_th: float = 0.008, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bound_th = bound_th
        for name in STATISTICS:
            self.add_state(_state(name), default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tracks", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self._open: dict[Hashable, TrackScores] = {}

    def update(
        self,
        preds: Iterable[Mask] | TrackScores,
        targets: Iterable[Mask] | None = None,
        voids: Iterable[Mask | None] | None = None,
    ) -> None:
        if isinstance(preds, TrackScores):
            if targets is not None or voids is not None:
                raise ValueError("update(track_scores) takes no targets: the scores are already computed")
            track = preds
        else:
            if targets is None:
                raise ValueError("update(preds, targets) needs the ground-truth masks of the same frames")
            track = TrackScores()
            frames = zip(preds, targets, voids, strict=True) if voids is not None else (
                (p, t, None) for p, t in zip(preds, targets, strict=True))
            for pred, target, void in frames:
                track.add_frame(pred, target, void, self.bound_th)
        summary = track.summary()  # raises on an empty track: 0 frames has no mean
        for name in STATISTICS:
            state = getattr(self, _state(name))
            state += summary[name]
        self.tracks += 1

    def update_frame(self, track_id: Hashable, pred: Mask, target: Mask, void: Mask | None = None) -> None:
        """Score one frame of an open track (opened by its first frame)."""
        self._open.setdefault(track_id, TrackScores()).add_frame(pred, target, void, self.bound_th)

    def end_track(self, track_id: Hashable) -> TrackScores:
        """Close a track opened by `update_frame`, adding its statistics to the states; returns its
        per-frame values (which `update(track_scores)` adds again exactly, e.g. from a stored result)."""
        if track_id not in self._open:
            raise KeyError(f"no open track {track_id!r}: feed its frames with update_frame first")
        track = self._open.pop(track_id)
        self.update(track)
        return track

    def reset(self) -> None:
        super().reset()
        self._open.clear()

    def compute(self) -> dict[str, Tensor]:
        if self._open:
            raise RuntimeError(f"tracks {sorted(map(repr, self._open))} are still open: call end_track for each")
        tracks = self.tracks.to(torch.float64)
        # nothing scored reads 0, not NaN, as in MeanIoU
        out = {name: (getattr(self, _state(name)) / tracks * 100.0 if self.tracks > 0
                      else torch.zeros((), dtype=torch.float64, device=tracks.device))
               for name in STATISTICS}
        return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out, "tracks": self.tracks.clone()}


def _state(name: str) -> str:
    return name.lower().replace("-", "_") + "_sum"  # "J-Mean" -> "j_mean_sum"


__all__ = [
    "STATISTICS", "Contour", "JandF", "TrackScores", "boundary_f", "boundary_map", "bound_pixels",
    "contour_accuracy", "region_similarity", "statistics",
]
