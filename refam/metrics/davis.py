"""The DAVIS 2017 evaluation of palette frames, one frame at a time, and Ref-DAVIS17's four runs.

`refam score` (folders of PNGs) and `refam test` (masks as the segmenter makes them) both score
through `VideoEvaluation`, so the two print the same numbers for the same masks.

It follows github.com/davisvideochallenge/davis2017-evaluation as its code stands now (master,
ac7c43f, 2023), which ReferFormer vendors unchanged in its `davis2017/` for `eval_davis.py`. Its
scoring last changed in April 2019: dc598b4 ("Fixed void mask computation") made void pixels leave
J and F in the unsupervised task, and 53be32c zero-pads the predictions of the semi-supervised
task. The first commit (30b698a) read void as background in both tasks; numbers published since
2019, Ref-DAVIS17's included, come from the current code.

Per video (`davis2017/davis.py::get_all_masks`, `evaluation.py`):
- The objects are ids 1..N of the annotations, N the largest id in the first annotated frame
  (sorted by file name); 255 marks void pixels, which belong to no object.
- unsupervised (Ref-DAVIS17, against `Annotations_unsupervised`): every annotated frame counts;
  void pixels are left out of both J and F (`db_eval_iou` drops them from the intersection and the
  union, `f_measure` from both masks before their boundaries are drawn). Predicted ids 1..P (P the
  largest id in any frame of the video, at most 20) are zero-padded to N and matched one-to-one to
  the objects by the Hungarian algorithm on (mean J + mean F) / 2 over the frames.
- semi-supervised: the caller drops the first and last annotated frames; predicted id k is object
  k; `evaluate` passes no void mask, so void counts as background; a video whose predictions hold
  fewer than N ids is zero-padded (a missing object scores as an empty prediction).
Each object's per-frame J and F become one `TrackScores`, and `JandF` averages them (frames within
an object, then all objects).

A predicted id absent from a frame is an empty mask there, and an empty mask's J and F depend on
the annotation only; so each frame keeps the scores of the ids it holds plus one "empty" row, and
a video is never held in memory, only its per-frame scores.

Ref-DAVIS17 (wjn922/ReferFormer scripts/dist_test_davis.sh, inference_davis.py, eval_davis.py; the
protocol MUTR, GroPrompt, SAMWISE and others reuse): each of the four expression sets is one run;
a run's masks of a video are merged into one palette frame (`RunPalettes`), each run is scored by
the unsupervised task, and the table's J&F, J and F are the means over the runs (`RunScores`,
`mean_of_runs`).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from refam.errors import ConfigError, DataError
from refam.metrics.jf import STATISTICS, Contour, JandF, TrackScores, bound_pixels, boundary_f, region_similarity

TASKS = ("unsupervised", "semi-supervised")
MAX_PROPOSALS = 20  # evaluation.py: _evaluate_unsupervised(max_n_proposals=20)
VOID = 255  # davis.py: DAVIS.VOID_LABEL
COLUMNS = ("J&F-Mean", *STATISTICS)

# How `refam test` scores a video dataset's J&F (a dataset's `protocol`); the text is printed with the results.
PROTOCOLS = {
    "unsupervised": "the DAVIS 2017 unsupervised evaluation of each annotator run's palette frames (Hungarian "
                    "matching, every annotated frame, void left out), mean of the runs: ReferFormer's eval_davis.py, "
                    "the published Ref-DAVIS17 protocol",
    "per_expression": "each expression's track scored alone, frames then expressions averaged (MeViS's eval_mevis.py)",
}


@dataclass
class ObjectScore:
    """One annotated object's per-frame scores; `pred_id` 0 means no predicted id was left for it."""

    video: str
    object_id: int
    pred_id: int
    scores: TrackScores


def count_objects(first_annotation: np.ndarray) -> int:
    """N: the largest object id of a video's first annotated frame, void (255) not counted."""
    return int(np.where(first_annotation == VOID, 0, first_annotation).max(initial=0))


class VideoEvaluation:
    """One video of the DAVIS 2017 evaluation, fed one annotated frame at a time.

    `add_frame(frame, annotation, prediction)` takes the frame's ids ([H, W] integers: the annotation
    with 255 as void, the prediction's object ids with 0 as background); `finish()` matches ids to
    objects and returns each object's per-frame J and F.
    """

    def __init__(self, video: str, n_objects: int, task: str = "unsupervised", bound_th: float = 0.008) -> None:
        if task not in TASKS:
            raise ConfigError(f"task {task!r}: choose one of {', '.join(TASKS)}")
        self.video, self.n_objects, self.task, self.bound_th = video, n_objects, task, bound_th
        self.frames: list[str] = []
        self.n_pred = 0  # the largest predicted id seen so far (P)
        self._empty: list[tuple[np.ndarray, np.ndarray]] = []  # per frame: J, F [N] of an empty prediction
        self._scored: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []  # per frame: id -> J, F [N]

    def add_frame(self, frame: str, annotation: np.ndarray, prediction: np.ndarray) -> None:
        if annotation.shape != prediction.shape:
            raise DataError(f"video {self.video}, frame {frame}: the prediction is {prediction.shape[-1]}x"
                            f"{prediction.shape[0]} pixels but the annotation {annotation.shape[-1]}x{annotation.shape[0]}; "
                            "predict at the annotation's resolution")
        n = self.n_objects
        ids = [int(i) for i in np.unique(prediction) if i != 0]
        top = ids[-1] if ids else 0
        if self.task == "unsupervised" and top > MAX_PROPOSALS:
            raise DataError(f"video {self.video}, frame {frame}: object id {top}; the unsupervised task allows at "
                            f"most {MAX_PROPOSALS} predicted objects per video")
        if self.task == "semi-supervised" and top > n:
            raise DataError(f"video {self.video}, frame {frame}: object id {top}, but the video has {n} objects; "
                            "in the semi-supervised task predicted id k must be object k")
        self.n_pred = max(self.n_pred, top)
        # semi-supervised: evaluate() passes void_pixels=None, so void is plain background there
        void = (annotation == VOID) if self.task == "unsupervised" else None
        keep = None if void is None or not void.any() else ~void
        objects = np.where(annotation == VOID, 0, annotation)
        bound_pix = bound_pixels(annotation.shape, self.bound_th)

        def contour(mask: np.ndarray) -> Contour:
            # f_measure removes void from both masks before drawing their boundaries
            return Contour.of(mask if keep is None else mask & keep, bound_pix)

        gts = [objects == g + 1 for g in range(n)]
        gt_contours = [contour(m) for m in gts]
        empty = np.zeros(annotation.shape, dtype=bool)
        empty_contour = Contour.of(empty, bound_pix)
        empty_j = np.array([region_similarity(empty, m, void) for m in gts], dtype=np.float64)
        empty_f = np.array([boundary_f(empty_contour, c) for c in gt_contours], dtype=np.float64)
        scored = {}
        for p in ids:
            if self.task == "semi-supervised" and p > n:
                continue
            mask = prediction == p
            pred_contour = contour(mask)
            j, f = empty_j.copy(), empty_f.copy()
            for g in (range(n) if self.task == "unsupervised" else (p - 1,)):
                j[g] = region_similarity(mask, gts[g], void)
                f[g] = boundary_f(pred_contour, gt_contours[g])
            scored[p] = (j, f)
        self.frames.append(frame)
        self._empty.append((empty_j, empty_f))
        self._scored.append(scored)

    def finish(self) -> list[ObjectScore]:
        """Every object's per-frame J and F, matched as the task says; [] when nothing is annotated."""
        n, t = self.n_objects, len(self.frames)
        if n == 0 or t == 0:
            return []  # the official scores no object of a video whose first frame holds none
        rows = n if self.task == "semi-supervised" else max(self.n_pred, n)  # zero-padded to N
        j, f = np.empty((rows, n, t)), np.empty((rows, n, t))
        for k, ((empty_j, empty_f), scored) in enumerate(zip(self._empty, self._scored)):
            j[:, :, k], f[:, :, k] = empty_j, empty_f
            for p, (pj, pf) in scored.items():
                j[p - 1, :, k], f[p - 1, :, k] = pj, pf
        if self.task == "semi-supervised":
            matches = [(g, g) for g in range(n)]
        else:
            picked, objects = linear_sum_assignment(-((j.mean(axis=2) + f.mean(axis=2)) / 2))
            matches = sorted(zip(picked.tolist(), objects.tolist()), key=lambda m: m[1])
        return [ObjectScore(self.video, g + 1, r + 1 if r < self.n_pred else 0,
                            TrackScores(j[r, g].tolist(), f[r, g].tolist())) for r, g in matches]


def mean_of_runs(summaries: Sequence[Mapping[str, float | Tensor]]) -> dict[str, float]:
    """The mean of several runs' J&F-Mean and J/F statistics, as Ref-DAVIS17 tables average its four."""
    if not summaries:
        raise ValueError("no run to average")
    return {c: float(np.mean([float(s[c]) for s in summaries])) for c in COLUMNS}


class RunPalettes:
    """A video's masks grouped into runs (Ref-DAVIS17's annotator sets) and merged into one palette
    frame per run, as MaskWriter writes `<dataset>-davis/anno<k>/<video>/<frame>.png`.

    Pixel value = the expression's object id; where a run's masks overlap, the expression listed
    later wins (ReferFormer's inference_davis.py takes the highest sigmoid score; SAM2's binary
    masks carry none). Masks are kept bit-packed and compressed until their frame is scored, since
    they arrive one expression track at a time and a frame is whole only when every track has run.
    """

    def __init__(self, expressions: Iterable) -> None:
        # expression id -> (run, rank within the run, object id)
        self._members: dict[str, tuple[int, int, int]] = {}
        counts: dict[int, int] = {}
        for expression in expressions:
            run = getattr(expression, "annotator", None)
            if run is None or run < 0 or not expression.object_ids:
                continue
            self._members[expression.expression_id] = (run, counts.get(run, 0), int(expression.object_ids[0]))
            counts[run] = counts.get(run, 0) + 1
        self.runs = sorted(counts)
        self._masks: dict[tuple[int, int], dict[int, tuple[tuple[int, ...], int, bytes]]] = {}

    def add(self, expression, frame_index: int, mask: np.ndarray) -> None:
        member = self._members.get(expression.expression_id)
        if member is None:
            return
        run, rank, object_id = member
        mask = np.asarray(mask, dtype=bool)
        packed = zlib.compress(np.packbits(mask).tobytes(), 1)
        self._masks.setdefault((run, frame_index), {})[rank] = (mask.shape, object_id, packed)

    def pop(self, run: int, frame_index: int, shape: tuple[int, ...]) -> np.ndarray:
        """The run's palette frame (uint8 ids; all background where none of its masks came), then forgotten."""
        merged = np.zeros(shape, dtype=np.uint8)
        for _, (mask_shape, object_id, packed) in sorted(self._masks.pop((run, frame_index), {}).items()):
            bits = np.unpackbits(np.frombuffer(zlib.decompress(packed), dtype=np.uint8), count=int(np.prod(mask_shape)))
            mask = bits.reshape(mask_shape).astype(bool)
            if mask.shape != merged.shape:
                raise DataError(f"frame {frame_index}: a mask of {mask.shape[1]}x{mask.shape[0]} pixels against an "
                                f"annotation of {shape[1]}x{shape[0]}; the segmenter must return masks at the frame's size")
            merged[mask] = object_id
        return merged


def evaluate_runs(video: str, frame_names: Sequence[str], annotation: Callable[[int], np.ndarray | None],
                  palettes: RunPalettes, bound_th: float = 0.008) -> dict[int, list[ObjectScore]]:
    """Each run of one video scored by the unsupervised task, every annotated frame (those for which
    `annotation(index)` gives the ids, 255 void) in order; the palettes are consumed."""
    evaluations: dict[int, VideoEvaluation] = {}
    for index, name in enumerate(frame_names):
        labels = annotation(index)
        if labels is None:
            continue  # not annotated: the official reads only the annotation PNGs that exist
        for run in palettes.runs:
            if run not in evaluations:  # the first annotated frame counts the objects
                evaluations[run] = VideoEvaluation(video, count_objects(labels), "unsupervised", bound_th)
            evaluations[run].add_frame(name, labels, palettes.pop(run, index, labels.shape))
    return {run: evaluation.finish() for run, evaluation in evaluations.items()}


class RunScores(torch.nn.Module):
    """J&F and the J/F statistics of each run (a `JandF` per run, so sums only: multi-GPU equals one
    GPU as long as a video is scored whole by one process) and their mean over the runs that were
    scored: Ref-DAVIS17's table figure."""

    def __init__(self, runs: int = 4, bound_th: float = 0.008) -> None:
        super().__init__()
        self.runs = torch.nn.ModuleList(JandF(bound_th=bound_th) for _ in range(runs))

    def update(self, run: int, objects: Iterable[ObjectScore]) -> None:
        if not 0 <= run < len(self.runs):
            raise ValueError(f"run {run} outside 0..{len(self.runs) - 1}")
        for obj in objects:
            self.runs[run].update(obj.scores)

    def compute(self) -> dict[str, Tensor]:
        """COLUMNS as the mean over scored runs (0 when none), `runs` (how many), and `run<k>/<column>` per run."""
        with warnings.catch_warnings():
            # a process may have had no video: its sums are simply zero
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            per_run = {k: metric.compute() for k, metric in enumerate(self.runs)}
        scored = {k: v for k, v in per_run.items() if int(v["tracks"]) > 0}
        mean = mean_of_runs(list(scored.values())) if scored else dict.fromkeys(COLUMNS, 0.0)
        out = {c: torch.tensor(v, dtype=torch.float64) for c, v in mean.items()}
        out["runs"] = torch.tensor(len(scored))
        for k, values in scored.items():
            out.update({f"run{k}/{c}": values[c] for c in COLUMNS})
        return out

    def reset(self) -> None:
        for metric in self.runs:
            metric.reset()


__all__ = [
    "COLUMNS", "MAX_PROPOSALS", "PROTOCOLS", "TASKS", "VOID", "ObjectScore", "RunPalettes", "RunScores",
    "VideoEvaluation", "count_objects", "evaluate_runs", "mean_of_runs",
]
