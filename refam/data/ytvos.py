"""Ref-YouTube-VOS (Seo et al., ECCV 2020), in the layout of the competition release.

    {root}/meta_expressions/{split}/meta_expressions.json
        {"videos": {<video>: {"expressions": {<exp_id>: {"exp": str, "obj_id": "1"}},  # obj_id: train only
                              "frames": ["00000", "00005", ...]}}}
    {root}/{split}/JPEGImages/<video>/<frame>.jpg
    {root}/train/Annotations/<video>/<frame>.png          palette PNGs, value = object id (train only)
    {root}/meta_expressions/test/meta_expressions.json    the competition's test videos

Sources: wjn922/ReferFormer docs/data.md, datasets/ytvos.py, inference_ytvos.py and
docs/Ref-Youtube-VOS.md.

The valid split, as ReferFormer's inference_ytvos.py reads it:
- meta_expressions/valid lists 507 videos, the competition's 202 valid videos and its 305 test
  videos; the test videos (those in meta_expressions/test) are dropped, leaving 202 (with 834
  expressions, the count in the RefAM paper). `exclude_test_videos` does the same when that file
  exists.
- The frames are `valid/JPEGImages/<video>/<frame>.jpg` for each name in the video's "frames": the
  6 fps subset (every 5th frame of the 30 fps video) that the release holds and the annotations use.
  The server scores one mask per listed frame, `Annotations/<video>/<exp_id>/<frame>.png` in the
  submitted zip, so `frame_names` are those names and `frames` their files, in the same order.
- There is no ground truth: `truth` is None and `object_ids` None. Scores come from the server.
The train split has obj_id and palette annotations; its samples carry a `PaletteTruth`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from refam.data.files import require
from refam.data.video_common import PaletteTruth, VideoDataset, VideoFrames, load_captions, load_meta_expressions
from refam.errors import DataError
from refam.types import VideoExpression


@dataclass(frozen=True)
class _Video:
    video: str
    frame_names: tuple[str, ...]
    expressions: tuple[tuple[str, str, int | None], ...]  # (exp_id, text, obj_id or None)


class RefYouTubeVOS(VideoDataset):
    """Ref-YouTube-VOS: one item per video with all its expressions (see the module docstring)."""

    benchmark = "ref_youtube_vos"
    submission_root = 'Annotations'  # the server's zip layout (MaskWriter)

    def __init__(
        self,
        root: str,
        split: str = "valid",
        captions_file: str | None = None,
        exclude_test_videos: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        require(self.root, "root", "Ref-YouTube-VOS root")
        meta_path = self.root / "meta_expressions" / split / "meta_expressions.json"
        require(meta_path, "root", "Ref-YouTube-VOS meta_expressions.json",
                " (with split; the release puts it in <root>/meta_expressions/<split>/)")
        require(self.root / split / "JPEGImages", "root", "Ref-YouTube-VOS frame folder",
                " (with split; the release puts the frames in <root>/<split>/JPEGImages)")
        meta = load_meta_expressions(meta_path, "root")

        if split == "valid" and exclude_test_videos:
            test_path = self.root / "meta_expressions" / "test" / "meta_expressions.json"
            if test_path.is_file():
                test_videos = set(load_meta_expressions(test_path, "root"))
                meta = {video: entry for video, entry in meta.items() if video not in test_videos}
            else:
                warnings.warn(
                    f"{test_path} not found, so the competition's test videos cannot be told apart from the valid "
                    "ones in meta_expressions/valid (507 videos, 202 of them valid); those without frames on disk "
                    "will be reported as bad samples. Add that file from the release, or set "
                    "the dataset's exclude_test_videos: false to silence this",
                    stacklevel=2,
                )

        self._videos = []
        for video, entry in sorted(meta.items()):
            expressions = []
            for exp_id, expression in entry["expressions"].items():
                obj_id = expression.get("obj_id")
                try:
                    obj_id = None if obj_id is None else int(obj_id)
                except (TypeError, ValueError):
                    raise DataError(f"{meta_path}: video '{video}', expression '{exp_id}' has a non-integer "
                                    f"\"obj_id\" {obj_id!r}") from None
                expressions.append((str(exp_id), expression["exp"], obj_id))
            if expressions:
                self._videos.append(_Video(video, tuple(sorted(entry["frames"])), tuple(expressions)))
        if not self._videos:
            raise DataError(f"{meta_path} lists no video with expressions; check it and split", field="root")
        self._captions = load_captions(captions_file)

    def _expressions_and_truth(
        self, entry: _Video, frames: VideoFrames
    ) -> tuple[list[VideoExpression], PaletteTruth | None]:
        expressions = [
            VideoExpression(text=text, expression_id=exp_id, object_ids=None if obj_id is None else [obj_id])
            for exp_id, text, obj_id in entry.expressions
        ]
        annotations_dir = self.root / self.split / "Annotations" / entry.video
        labelled = annotations_dir.is_dir() and all(obj_id is not None for _, _, obj_id in entry.expressions)
        return expressions, PaletteTruth.of_frames(annotations_dir, frames) if labelled else None
