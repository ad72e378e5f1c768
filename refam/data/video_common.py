"""What the video readers (Ref-DAVIS17, Ref-YouTube-VOS, MeViS) share.

All three use the layout that Ref-YouTube-VOS introduced:

    .../JPEGImages/<video>/<frame>.jpg          frames, named by zero-padded frame number
    .../meta_expressions.json                   {"videos": {<video>: {"expressions": {<exp_id>: {"exp": ...}},
                                                                       "frames": [<frame>, ...]}}}

(wjn922/ReferFormer datasets/ytvos.py, inference_ytvos.py; henghuiding/MeViS README "File Structure").
One item is one video with all its expressions, so the extractor runs one transformer pass per video.
Frames stay file paths; nothing here decodes a frame (PaletteTruth reads frame headers for their size).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from refam.data.files import load_json
from refam.errors import DataError
from refam.io.pixels import check_mask_size, read_mask_file, viewed_size
from refam.types import BadSample, VideoExpression, VideoSample, VideoTruth

FRAME_SUFFIX = ".jpg"
ANNOTATION_SUFFIX = ".png"
VOID = 255  # DAVIS palette index of pixels that belong to no object


def load_meta_expressions(path: Path, field: str) -> dict[str, dict[str, Any]]:
    """The `videos` dict of a meta_expressions.json, checked: every video has `expressions`
    (exp_id -> {"exp": str, ...}) and `frames` (a list of frame names)."""
    raw = load_json(path, field, "meta_expressions.json")
    videos = raw.get("videos") if isinstance(raw, dict) else None
    if not isinstance(videos, dict):
        raise DataError(f"{path}: expected an object with a \"videos\" object (the Ref-YouTube-VOS meta_expressions format)")
    for video, entry in videos.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: video '{video}' is not an object")
        expressions, frames = entry.get("expressions"), entry.get("frames")
        if not isinstance(expressions, dict):
            raise DataError(f"{path}: video '{video}' has no \"expressions\" object")
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise DataError(f"{path}: video '{video}' has no \"frames\" list of frame names")
        for exp_id, expression in expressions.items():
            if not isinstance(expression, dict) or not isinstance(expression.get("exp"), str):
                raise DataError(f"{path}: video '{video}', expression '{exp_id}' has no \"exp\" string")
    return videos


def load_captions(captions_file: str | None) -> dict[str, str]:
    """`{video_id: caption}` from a JSON file; {} when none is given (every video gets the empty prompt)."""
    if captions_file is None:
        return {}
    path = Path(captions_file)
    raw = load_json(path, "captions_file", "captions file")
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise DataError(f"{path}: a captions file is a JSON object {{\"<video id>\": \"<caption>\"}} of strings; "
                        "fix the file or unset this", field="captions_file")
    return {k: " ".join(v.split()) for k, v in raw.items()}


def frame_paths(folder: Path, names: list[str], suffix: str = FRAME_SUFFIX) -> list[str]:
    return [str(folder / f"{name}{suffix}") for name in names]


def missing_frames(video: str, folder: Path, paths: list[str], field: str = "root") -> str | None:
    """Why the video's frames cannot be read (for a BadSample), or None when every file exists.
    Only checks that files exist: no frame is opened."""
    if not folder.is_dir():
        return f"frame folder of video '{video}' not found: {folder}. Check the dataset's {field}, or restore the folder"
    if not paths:
        return f"video '{video}' lists no frames"
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        return (f"{len(missing)} of {len(paths)} frames of video '{video}' are missing, the first {missing[0]}; "
                "restore them from the dataset release")
    return None


@dataclass(frozen=True)
class VideoFrames:
    """A video's frames, all on disk: their folder, names (as the server's submission names them) and
    files, in the same order."""

    folder: Path
    names: list[str]
    paths: list[str]


class VideoDataset(Dataset, ABC):
    """Base of the video readers: one item per video with all its expressions, frames under
    `<root>/<split>/JPEGImages/<video>/` (a reader with another layout overrides `frames_folder`).

    A subclass sets `benchmark` (the metric-name prefix, e.g. "mevis"), `root`, `split`, `_captions`
    (`load_captions`) and `_videos` (one entry per video, with `video` and `frame_names`, None where
    the layout lists no frames), and says what a video's expressions and ground truth are in
    `_expressions_and_truth`.
    """

    is_video = True  # scored with J&F (refam.evaluation.scoring)
    benchmark: str
    root: Path
    split: str
    _captions: dict[str, str]
    _videos: list[Any]

    @property
    def name(self) -> str:
        """Prefix for metric names, e.g. "mevis/valid_u" or "ref_youtube_vos/valid"."""
        return f"{self.benchmark}/{self.split}"

    def __len__(self) -> int:
        return len(self._videos)

    def frames_folder(self, video: str) -> Path:
        return self.root / self.split / "JPEGImages" / video

    def video_frames(self, video: str, names: Sequence[str] | None) -> VideoFrames | BadSample:
        """The video's frames, or the BadSample saying which are missing. `names=None` (a layout with no
        frame list) takes the folder's frames in name order."""
        folder = self.frames_folder(video)
        if names is None:
            listed = folder.iterdir() if folder.is_dir() else ()
            names = sorted(p.stem for p in listed if p.suffix.lower() == FRAME_SUFFIX)
        paths = frame_paths(folder, list(names))
        reason = missing_frames(video, folder, paths)
        return BadSample(video, reason) if reason is not None else VideoFrames(folder, list(names), paths)

    @abstractmethod
    def _expressions_and_truth(
        self, entry: Any, frames: VideoFrames
    ) -> tuple[list[VideoExpression], VideoTruth | None] | BadSample:
        """The video's expressions and its ground truth (None where the split has none), or the BadSample
        saying why they cannot be read."""

    def __getitem__(self, index: int) -> VideoSample | BadSample:
        entry = self._videos[index]
        frames = self.video_frames(entry.video, entry.frame_names)
        if isinstance(frames, BadSample):
            return frames
        read = self._expressions_and_truth(entry, frames)
        if isinstance(read, BadSample):
            return read
        expressions, truth = read
        return VideoSample(
            sample_id=entry.video,
            frames=frames.paths,
            expressions=expressions,
            caption=self._captions.get(entry.video, ""),
            source=str(frames.folder),
            truth=truth,
            frame_names=frames.names,
        )


def read_label_png(path: Path) -> np.ndarray:
    """A palette (DAVIS / YouTube-VOS style) or grayscale PNG as its integer labels [H, W], upright
    (EXIF orientation applied); the rule is `refam.io.pixels.label_map`."""
    return read_mask_file(path, rule="labels")


def frame_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of a frame as shown (after EXIF orientation), from its header."""
    with Image.open(path) as image:
        return viewed_size(image)


class PaletteTruth(VideoTruth):
    """Ground truth from per-frame palette PNGs, `Annotations/<video>/<frame>.png`, where a pixel's
    value is its object id (0 background; DAVIS's 255 marks void and belongs to no object).

    A frame whose PNG is absent is unannotated (`mask` returns None). The last frame read is kept, so
    asking for K expressions of one frame reads its PNG once. With `frames` (the video's frame files,
    one per annotation path) each annotation read is checked against its frame's size: a mismatch
    is a `DataError` naming both files and sizes.
    """

    def __init__(self, annotation_paths: list[str], frames: list[str] | None = None) -> None:
        self.paths = list(annotation_paths)
        self.frames = list(frames) if frames is not None else None
        self._cached: tuple[int, np.ndarray | None] | None = None

    @classmethod
    def of_frames(cls, annotations: Path, frames: VideoFrames) -> PaletteTruth:
        """The truth of `frames` from the folder that holds one `<frame name>.png` per frame."""
        return cls(frame_paths(annotations, frames.names, ANNOTATION_SUFFIX), frames=frames.paths)

    def labels(self, frame_index: int) -> np.ndarray | None:
        if self._cached is not None and self._cached[0] == frame_index:
            return self._cached[1]
        path = Path(self.paths[frame_index])
        labels = read_label_png(path) if path.is_file() else None
        if labels is not None and self.frames is not None and frame_index < len(self.frames):
            check_mask_size(labels, frame_size(self.frames[frame_index]), path, self.frames[frame_index])
        self._cached = (frame_index, labels)
        return labels

    def mask(self, expression: VideoExpression, frame_index: int) -> np.ndarray | None:
        labels = self.labels(frame_index)
        if labels is None:
            return None
        ids = [i for i in (expression.object_ids or []) if i not in (0, VOID)]
        return np.isin(labels, ids) if ids else np.zeros(labels.shape, dtype=bool)

    def identity(self) -> list:
        """Each annotation PNG's path and content sha256 (None where the frame has none)."""
        from refam.identity import frames_identity

        return frames_identity(self.paths)

    def void(self, frame_index: int) -> np.ndarray | None:
        """bool [H, W] of the frame's void (255) pixels; None where the frame is unannotated.

        The official davis2017-evaluation (current code, since dc598b4 in 2019) leaves these pixels
        out of J and F in its unsupervised task, the one Ref-DAVIS17 is scored with, and counts them
        as background in the semi-supervised task; its first commit counted them as background in both.
        """
        labels = self.labels(frame_index)
        return None if labels is None else labels == VOID
