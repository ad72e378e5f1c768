"""`refam score`: J&F of prediction folders in the DAVIS layout, as the official DAVIS 2017 evaluation.

    refam score --pred PRED_DIR [PRED_DIR ...] --gt GT_DIR [--task unsupervised] [--videos val.txt]
                [--per-video] [--csv scores.csv]

Layout, as github.com/davisvideochallenge/davis2017-evaluation reads it (its current code, which
ReferFormer's eval_davis.py vendors; `refam.metrics.davis` says what changed since its first commit):
- GT_DIR/<video>/<frame>.png: the annotations (DAVIS `Annotations[_unsupervised]/480p`), palette
  PNGs whose pixel value is the object id (0 background, 255 void). The objects are ids 1..N, N
  being the largest id in the first annotated frame.
- PRED_DIR/<video>/<frame>.png for every annotated frame (`davis2017/results.py`): palette or
  single-channel PNGs of object ids; extra files and videos are ignored. A single-channel PNG
  holding only 0 and 255 (prediction or annotation) is one object, id 1, as a thresholded mask saved
  x255; the official would read it as object 255 and refuse it.
  Videos are the GT_DIR sub-folders (or the names listed in --videos, e.g. ImageSets/2017/val.txt).

Tasks (`davis2017/evaluation.py`; the scoring itself is `refam.metrics.davis.VideoEvaluation`, which
`refam test` also runs on Ref-DAVIS17):
- unsupervised (the official default, and Ref-DAVIS17 as ReferFormer's `eval_davis.py` runs it on
  `Annotations_unsupervised`): all frames; void (255) pixels are left out of J and F; predicted ids
  (at most 20, zero-padded to N) are matched one-to-one to the N objects by the Hungarian algorithm
  on (mean J + mean F) / 2.
- semi-supervised: the first and last annotated frames are not scored; predicted id k is object k;
  void counts as background (the official passes no void mask here); objects missing from the
  predictions are scored as empty (the official zero-pads them).

Each object's J and F are averaged over its frames, then over all objects of all videos; J&F-Mean is
(J-Mean + F-Mean) / 2. Figures are x100. Several --pred folders (Ref-DAVIS17's four annotator runs,
anno0..anno3, which ReferFormer's scripts/dist_test_davis.sh scores one by one) are each scored
and then averaged: the figure Ref-DAVIS17 tables print.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from refam.errors import ArgumentParser, ConfigError, DataError, MissingInputError, number, reports_user_errors
from refam.metrics.davis import (  # noqa: F401  (ObjectScore, TASKS, ...: part of this module's interface)
    COLUMNS,
    MAX_PROPOSALS,
    TASKS,
    VOID,
    ObjectScore,
    VideoEvaluation,
    count_objects,
    mean_of_runs,
)
from refam.metrics.jf import STATISTICS, JandF


def read_ids(path: Path) -> np.ndarray:
    """The pixel values of one mask PNG ([H, W] uint8): object ids, and 255 for void in annotations."""
    try:
        with Image.open(path) as image:
            mode, ids = image.mode, np.array(image)
    except FileNotFoundError as err:
        raise MissingInputError(f"{path}: no such file") from err
    except OSError as err:
        raise DataError(f"{path}: not a readable image ({err})") from err
    if mode == "1":
        ids = ids.astype(np.uint8)
    elif mode not in ("P", "L"):
        raise DataError(f"{path}: a {mode} image; save masks as palette ('P') or single-channel ('L') PNGs "
                        "whose pixel values are object ids (0 = background)")
    elif mode == "L" and ids.max(initial=0) == VOID and not np.any((ids != 0) & (ids != VOID)):
        ids = (ids == VOID).astype(np.uint8)  # a binary 0/255 mask: one object
    return ids


def annotated_frames(gt_video: Path) -> list[str]:
    """Frame names in the order davis.py sorts them (by file name)."""
    frames = sorted(p.name[:-len(".png")] for p in gt_video.glob("*.png"))
    if not frames:
        raise DataError(f"{gt_video}: no annotation PNGs; expected GT_DIR/<video>/<frame>.png")
    return frames


def _predicted_ids(pred_video: Path, frames: list[str], shape: tuple[int, ...]) -> tuple[int, Path | None]:
    """First pass: every prediction exists and fits; the largest id and the first file holding it."""
    if not pred_video.is_dir():
        raise MissingInputError(
            f"{pred_video}: no predictions for video {pred_video.name}; write PRED_DIR/{pred_video.name}/<frame>.png "
            "for its annotated frames, or leave the video out with --videos")
    top, where = 0, None
    for frame in frames:
        path = pred_video / f"{frame}.png"
        if not path.is_file():
            raise MissingInputError(
                f"{path}: missing prediction for annotated frame {frame} of video {pred_video.name}; "
                "write one PNG per annotated frame with the same name as the annotation")
        ids = read_ids(path)
        if ids.shape != shape:
            raise DataError(f"{path}: {ids.shape[1]}x{ids.shape[0]} pixels but the annotations are "
                            f"{shape[1]}x{shape[0]}; save predictions at the annotation's resolution")
        if int(ids.max(initial=0)) > top:
            top, where = int(ids.max()), path
    return top, where


def score_video(pred_video: Path, gt_video: Path, task: str = "unsupervised",
                bound_th: float = 0.008) -> list[ObjectScore]:
    """Per-frame J and F of every annotated object of one video, frames read one at a time."""
    video, frames = gt_video.name, annotated_frames(gt_video)
    first_path = gt_video / f"{frames[0]}.png"
    first = read_ids(first_path)
    evaluation = VideoEvaluation(video, count_objects(first), task, bound_th)  # checks the task
    n_gt = evaluation.n_objects
    if task == "semi-supervised":
        if len(frames) < 3:
            raise DataError(f"{gt_video}: {len(frames)} annotated frames; the semi-supervised task scores all "
                            "but the first and last, so it needs at least 3")
        frames = frames[1:-1]
    # a first pass names the file at fault before any scoring
    n_pred, where = _predicted_ids(pred_video, frames, first.shape)
    if n_gt == 0:
        return []  # nothing annotated: the official scores no object here either
    if task == "semi-supervised" and n_pred > n_gt:
        raise DataError(f"{where}: object id {n_pred}, but video {video} has {n_gt} objects (ids 1..{n_gt}, "
                        f"counted in its first annotation {first_path}); predicted id k must be object k")
    if task == "unsupervised" and n_pred > MAX_PROPOSALS:
        raise DataError(f"{where}: object id {n_pred}; the unsupervised task allows at most {MAX_PROPOSALS} "
                        "predicted objects per video")
    for frame in frames:
        gt_path = gt_video / f"{frame}.png"
        gt_ids = read_ids(gt_path)
        if gt_ids.shape != first.shape:
            raise DataError(f"{gt_path}: {gt_ids.shape[1]}x{gt_ids.shape[0]} pixels but {first_path} is "
                            f"{first.shape[1]}x{first.shape[0]}; a video's annotations share one size")
        evaluation.add_frame(frame, gt_ids, read_ids(pred_video / f"{frame}.png"))
    return evaluation.finish()


def read_video_list(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingInputError(f"--videos {path}: no such file; give a text file with one video name per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"--videos {path}: cannot read it as text ({err}); give a text file with one video name "
                        "per line") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def score_folder(pred_dir: Path, gt_dir: Path, task: str = "unsupervised", videos: list[str] | None = None,
                 bound_th: float = 0.008) -> list[ObjectScore]:
    """Every object of every video of `gt_dir` (or of `videos`), scored against `pred_dir`."""
    for what, folder in (("--gt", gt_dir), ("--pred", pred_dir)):
        if not folder.is_dir():
            raise MissingInputError(f"{what} {folder}: no such folder")
    if videos is None:
        videos = sorted(d.name for d in gt_dir.iterdir() if d.is_dir())
        if not videos:
            raise DataError(f"--gt {gt_dir}: no video folders; expected GT_DIR/<video>/<frame>.png")
    objects = []
    for video in videos:
        if not (gt_dir / video).is_dir():
            raise MissingInputError(f"{gt_dir / video}: no annotations for listed video {video}")
        objects += score_video(pred_dir / video, gt_dir / video, task, bound_th)
    return objects


def summarize(objects: list[ObjectScore], bound_th: float = 0.008) -> dict[str, float]:
    """J&F-Mean and the J/F statistics (×100) over the given objects, through the `JandF` metric."""
    if not objects:
        raise DataError("no annotated object to score: the annotation folders hold only background")
    metric = JandF(bound_th=bound_th)
    for obj in objects:
        metric.update(obj.scores)
    return {name: float(value) for name, value in metric.compute().items() if name != "tracks"}


def _table(rows: list[tuple[str, dict[str, float], int]], label: str) -> str:
    header = "".join(f"{c:>10}" for c in COLUMNS) + f"{'objects':>9}  {label}"
    lines = [header] + ["".join(f"{s[c]:10.2f}" for c in COLUMNS) + f"{n:9d}  {name}" for name, s, n in rows]
    return "\n".join(lines)


def _write_csv(path: Path, runs: list[tuple[str, list[ObjectScore]]], summaries: list[tuple[str, dict[str, float]]]) -> None:
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["run", "video", "object", "pred_id", "frames", *COLUMNS])
        for run, objects in runs:
            for obj in objects:
                s = obj.scores.summary()
                values = [(s["J-Mean"] + s["F-Mean"]) / 2 * 100, *(s[c] * 100 for c in STATISTICS)]
                out.writerow([run, obj.video, obj.object_id, obj.pred_id, len(obj.scores), *(f"{v:.6f}" for v in values)])
        for run, summary in summaries:
            out.writerow([run, "(all)", "", "", "", *(f"{summary[c]:.6f}" for c in COLUMNS)])


def check_csv(path: Path) -> None:
    """--csv names a file that can be written: not a folder, in a folder that exists."""
    if path.is_dir():
        raise ConfigError(f"--csv {path} is a folder; give a file name for the scores, e.g. {path / 'scores.csv'}")
    if not path.parent.is_dir():
        raise MissingInputError(f"--csv {path}: no folder {path.parent}; create it or write the scores elsewhere")


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="refam score", description=__doc__)
    parser.add_argument("--pred", type=Path, nargs="+", required=True, metavar="PRED_DIR",
                        help="prediction folder(s); several are scored separately and averaged")
    parser.add_argument("--gt", type=Path, required=True, metavar="GT_DIR", help="annotation folder")
    parser.add_argument("--task", choices=TASKS, default="unsupervised")
    parser.add_argument("--videos", type=Path, metavar="FILE", help="score only these videos (one name per line)")
    parser.add_argument("--bound-th", type=number(float, above=0), default=0.008,
                        help="F's match tolerance: a fraction of the image diagonal, or pixels when >= 1")
    parser.add_argument("--per-video", action="store_true", help="also print each video's scores")
    parser.add_argument("--csv", type=Path, help="write per-object and overall scores here")
    args = parser.parse_args(argv)
    if args.csv:
        check_csv(args.csv)  # before scoring: the scores are not lost to a bad path at the end
    videos = read_video_list(args.videos) if args.videos else None
    # a list, not a dict: the same folder may be given twice
    runs = [(str(p), score_folder(p, args.gt, args.task, videos, args.bound_th)) for p in args.pred]
    summaries = [(run, summarize(objects, args.bound_th)) for run, objects in runs]
    if args.per_video:
        for run, objects in runs:
            names = list(dict.fromkeys(o.video for o in objects))
            rows = [(v, summarize([o for o in objects if o.video == v], args.bound_th),
                     sum(o.video == v for o in objects)) for v in names]
            print(_table(rows, f"video ({run})") + "\n")
    rows = [(run, summary, len(objects)) for (run, objects), (_, summary) in zip(runs, summaries)]
    if len(runs) > 1:
        mean = mean_of_runs([s for _, s in summaries])
        rows.append((f"mean of {len(runs)} runs", mean, round(np.mean([len(o) for _, o in runs]))))
        summaries.append(("(mean)", mean))
    print(_table(rows, f"predictions ({args.task})"))
    if args.csv:
        try:
            _write_csv(args.csv, runs, summaries)
        except OSError as err:
            raise ConfigError(f"--csv {args.csv}: cannot write ({err.strerror or err}); the scores are printed above, "
                              "choose another file") from err
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
